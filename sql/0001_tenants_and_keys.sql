-- Tenants and their API keys. A key is stored only as the SHA-256 of its full text; the
-- public key_id (embedded in the key) finds the row, the hash proves possession.
CREATE TABLE tenants (
    name        text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_id       text PRIMARY KEY,
    tenant       text NOT NULL REFERENCES tenants (name),
    scope        text NOT NULL CHECK (scope IN ('admin', 'ingest', 'read')),
    customer_id  text,
    name         text,
    secret_hash  bytea NOT NULL CHECK (length(secret_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

CREATE INDEX api_keys_tenant_idx ON api_keys (tenant);
