//! A PostgreSQL cluster that Tally creates, starts and stops itself.
