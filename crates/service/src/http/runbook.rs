//! `GET /runbook`: `docs/operations.md`, the operator's guide with a section per alert, as a
//! web page built into the binary. Each alert of `deploy/prometheus/alerts.yml` links to its
//! section here (`runbook_url`), so the link works wherever a node or the balancer in front
//! of the nodes is reachable, and always matches the version that runs.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::response::Html;
use axum::routing::get;
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd};

use super::route::Route;

pub const ROUTES: &[Route] = &[Route::new("/runbook", || get(runbook))];

/// The guide, read at build time.
const OPERATIONS: &str = include_str!("../../../../docs/operations.md");

static PAGE: LazyLock<String> = LazyLock::new(|| page(OPERATIONS));

/// The operations guide and the alerts' runbooks, as HTML.
#[utoipa::path(get, path = "/runbook", tag = "operations", responses(
    (status = 200, description = "docs/operations.md as a web page: each alert's runbook_url points at its section (`#tallynodedown`)", body = String, content_type = "text/html"),
))]
pub(crate) async fn runbook() -> Html<&'static str> {
    Html(PAGE.as_str())
}

/// The Markdown as a page whose headings carry the anchors GitHub gives them, so that a link
/// to a section of `docs/operations.md` works the same in the repository and on a node.
fn page(markdown: &str) -> String {
    let events: Vec<Event> = Parser::new_ext(markdown, Options::ENABLE_TABLES).collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut with_ids = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        match event {
            Event::Start(Tag::Heading {
                level,
                classes,
                attrs,
                ..
            }) => {
                let text: String = events[i + 1..]
                    .iter()
                    .take_while(|e| !matches!(e, Event::End(TagEnd::Heading(_))))
                    .filter_map(|e| match e {
                        Event::Text(t) | Event::Code(t) => Some(t.as_ref()),
                        _ => None,
                    })
                    .collect();
                let mut id = anchor(&text);
                let n = seen.entry(id.clone()).or_insert(0);
                if *n > 0 {
                    id = format!("{id}-{n}");
                }
                *n += 1;
                with_ids.push(Event::Start(Tag::Heading {
                    level: *level,
                    id: Some(CowStr::from(id)),
                    classes: classes.clone(),
                    attrs: attrs.clone(),
                }));
            }
            other => with_ids.push(other.clone()),
        }
    }
    let mut body = String::new();
    pulldown_cmark::html::push_html(&mut body, with_ids.into_iter());
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Tally: operations and runbooks</title>\n<style>\n\
         body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; }}\n\
         table {{ border-collapse: collapse; font-size: 0.9rem; }}\n\
         th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; vertical-align: top; }}\n\
         code {{ background: #f4f4f4; padding: 0 0.2rem; }}\n\
         h3:target {{ background: #fff3c4; }}\n\
         </style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )
}

/// The anchor GitHub gives a heading: lower case, spaces as `-`, punctuation other than `-`
/// and `_` left out.
pub fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_get_githubs_anchors() {
        assert_eq!(anchor("TallyNodeDown"), "tallynodedown");
        assert_eq!(
            anchor("How many rows the database sees"),
            "how-many-rows-the-database-sees"
        );
        assert_eq!(
            anchor("Over a `PostgreSQL`-compatible DB!"),
            "over-a-postgresql-compatible-db"
        );
        let html = page("# A\n\n## Alerts and runbooks\n\n### TallyNodeDown\n\ntext\n\n## A\n");
        assert!(
            html.contains("<h3 id=\"tallynodedown\">TallyNodeDown</h3>"),
            "{html}"
        );
        assert!(html.contains("<h2 id=\"alerts-and-runbooks\">"), "{html}");
        assert!(html.contains("<h2 id=\"a-1\">A</h2>"), "{html}");
    }

    #[test]
    fn the_page_is_the_operations_guide_with_tables() {
        assert!(PAGE.contains("<h2 id=\"alerts-and-runbooks\">"));
        assert!(PAGE.contains("<table>"));
    }
}
