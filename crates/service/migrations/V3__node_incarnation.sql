-- The process that currently owns the node id. Each start writes a new incarnation, and a
-- flush commits only if its incarnation is still the recorded one, so a stale twin of a node
-- (paused, then resumed after another process took its id over) cannot write.
ALTER TABLE tally_nodes ADD COLUMN incarnation text;
