-- Most records are allows, and the denies are what a review looks for: index the denies alone
-- by time instead of every record by (decision, time), so an allowed request's insert writes
-- one index entry fewer. A query for denies names the decision as a literal (query.rs), which
-- the planner needs to pick a partial index; a query for allows reads the time index.
DROP INDEX IF EXISTS audit_records_decision;
CREATE INDEX IF NOT EXISTS audit_records_deny ON audit_records (time_ms) WHERE decision = 'deny';
