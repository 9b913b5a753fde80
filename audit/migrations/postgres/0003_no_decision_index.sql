-- The (decision, time) index 0002's index of the denies replaces; CONCURRENTLY, as there.
DROP INDEX CONCURRENTLY IF EXISTS audit_records_decision;
