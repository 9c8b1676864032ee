-- A flush now leaves out any key PostgreSQL refuses for good (an operator's constraint, say),
-- not only totals out of range: `reason` says which ('total_out_of_range' or
-- 'refused_by_database'), and these columns say why in PostgreSQL's words: its SQLSTATE and
-- message (Tally's own message for a total its check found out of range). Rows written
-- before this migration have neither.
ALTER TABLE rejected_increments
    ADD COLUMN sqlstate text,
    ADD COLUMN message  text;
