-- Room on every page of `counters` for a new version of each of its rows. A flush updates
-- each key it writes once; with pages filled to half, the row's new version fits on the
-- page of the old one, so PostgreSQL updates it in place (a HOT update): no new entry in the
-- primary key's index, no index page split, about a third of the WAL. A flush of 1,000,000
-- existing keys took half the time (bench/analysis.md, "Flushing 1 million existing keys").
-- The price is a table twice the size. Pages written before this migration stay full until
-- their rows move (an update that does not fit moves the row to a page filled only to half),
-- or at once with `VACUUM FULL counters` (which locks the table while it rewrites it). Setting
-- the fillfactor takes no lock that blocks reads or writes.
ALTER TABLE counters SET (fillfactor = 50);
