-- One row per decision; `body` is the exact JSON that was hashed, the other columns are
-- copies for indexed queries (verify checks they agree with `body`).
CREATE TABLE IF NOT EXISTS audit_records (
    chain       TEXT    NOT NULL,
    seq         BIGINT NOT NULL,
    id          TEXT    NOT NULL,
    time_ms     BIGINT NOT NULL,
    request_id  TEXT    NOT NULL,
    principal   TEXT    NOT NULL,
    end_user    TEXT,
    action      TEXT    NOT NULL,
    resource    TEXT    NOT NULL,
    decision    TEXT    NOT NULL,
    bypass      BIGINT NOT NULL,
    grant_id    TEXT,
    mode        TEXT    NOT NULL,
    policies    TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX IF NOT EXISTS audit_records_time ON audit_records (time_ms);
CREATE INDEX IF NOT EXISTS audit_records_principal ON audit_records (principal, time_ms);
-- Partial indexes: most records have no end user and no bypass.
CREATE INDEX IF NOT EXISTS audit_records_end_user ON audit_records (end_user, time_ms) WHERE end_user IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_records_decision ON audit_records (decision, time_ms);
CREATE INDEX IF NOT EXISTS audit_records_request ON audit_records (request_id);
CREATE INDEX IF NOT EXISTS audit_records_bypass ON audit_records (time_ms) WHERE bypass = 1;

CREATE TABLE IF NOT EXISTS audit_checkpoints (
    chain      TEXT    NOT NULL,
    seq        BIGINT NOT NULL,
    hash       TEXT    NOT NULL,
    time_ms    BIGINT NOT NULL,
    kind       TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    signature  TEXT    NOT NULL,
    PRIMARY KEY (chain, seq, kind)
);
