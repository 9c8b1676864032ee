//! A route of the API: its path and its handlers. Each resource module lists its routes once;
//! the router is built from those lists and the metrics label requests with the same paths,
//! so the two cannot drift apart.

use std::borrow::Cow;
use std::sync::Arc;

use axum::routing::MethodRouter;

use super::context::ApiContext;

/// The probes, the metrics, the API's description, the runbooks and the console's static
/// files: never behind auth, never rate limited, never refused for the in-flight limit, so
/// that load balancers and monitoring always reach them, and a browser can load the console
/// before it has credentials (the files hold no data; the console's data route is not open).
pub const OPEN_PATHS: &[&str] = &[
    "/health",
    "/api/health",
    "/ready",
    "/metrics",
    "/openapi.json",
    "/runbook",
    "/",
    "/console.js",
    "/console.css",
];

/// One path and what answers on it.
pub struct Route {
    /// The path as clients write it and as the metrics label it (`/counters/{key}`). At most
    /// one `{parameter}`. One that ends the path takes all the rest of it, '/' included, so
    /// that keys holding '/' need no escaping; one followed by more of the path
    /// (`/items/{tenant}/count`) is one segment.
    pub path: &'static str,
    /// Where the parameter starts, if the path has one.
    parameter_at: Option<usize>,
    /// Where the path goes on after the parameter's closing brace, if it does.
    suffix_at: Option<usize>,
    handlers: fn() -> MethodRouter<Arc<ApiContext>>,
}

impl Route {
    pub const fn new(path: &'static str, handlers: fn() -> MethodRouter<Arc<ApiContext>>) -> Self {
        let bytes = path.as_bytes();
        let mut i = 0;
        while i < bytes.len() && bytes[i] != b'{' {
            i += 1;
        }
        let parameter_at = if i < bytes.len() { Some(i) } else { None };
        while i < bytes.len() && bytes[i] != b'}' {
            i += 1;
        }
        let suffix_at = if i + 1 < bytes.len() {
            Some(i + 1)
        } else {
            None
        };
        Route {
            path,
            parameter_at,
            suffix_at,
            handlers,
        }
    }

    /// Whether a request for `path` is one of this route's; also true for a path the router
    /// refuses for an empty parameter, which is still a request for this resource.
    pub fn matches(&self, path: &str) -> bool {
        match (self.parameter_at, self.suffix_at) {
            (None, _) => path == self.path,
            (Some(at), None) => path.starts_with(&self.path[..at]),
            (Some(at), Some(suffix)) => path
                .strip_prefix(&self.path[..at])
                .and_then(|rest| rest.strip_suffix(&self.path[suffix..]))
                .is_some_and(|segment| !segment.is_empty() && !segment.contains('/')),
        }
    }

    /// The path in axum's syntax, where a parameter that takes the rest is `{*name}`.
    pub fn router_path(&self) -> Cow<'static, str> {
        match (self.parameter_at, self.suffix_at) {
            (Some(at), None) => {
                Cow::Owned(format!("{}{{*{}", &self.path[..at], &self.path[at + 1..]))
            }
            _ => Cow::Borrowed(self.path),
        }
    }

    pub fn handlers(&self) -> MethodRouter<Arc<ApiContext>> {
        (self.handlers)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_takes_the_rest_of_the_path() {
        let counters = Route::new("/counters/{key}", MethodRouter::new);
        assert_eq!(counters.router_path(), "/counters/{*key}");
        assert!(counters.matches("/counters/a/b"));
        assert!(!counters.matches("/counter"));
        let ready = Route::new("/ready", MethodRouter::new);
        assert_eq!(ready.router_path(), "/ready");
        assert!(ready.matches("/ready") && !ready.matches("/ready/now"));
    }

    #[test]
    fn a_parameter_inside_the_path_is_one_segment() {
        let count = Route::new("/items/{tenant}/count", MethodRouter::new);
        assert_eq!(count.router_path(), "/items/{tenant}/count");
        assert!(count.matches("/items/acme/count"));
        assert!(!count.matches("/items/a/b/count"), "one segment");
        assert!(!count.matches("/items//count"));
        assert!(!count.matches("/items/acme"));
        assert!(!count.matches("/items"));
    }
}
