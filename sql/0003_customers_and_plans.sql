-- Plans are stored as the validated JSON document (the pricing engine parses it again).
CREATE TABLE plans (
    tenant      text        NOT NULL REFERENCES tenants (name),
    plan_id     text        NOT NULL,
    body        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, plan_id)
);

CREATE TABLE customers (
    tenant       text        NOT NULL REFERENCES tenants (name),
    customer_id  text        NOT NULL,
    name         text,
    email        text,
    plan_id      text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, customer_id),
    FOREIGN KEY (tenant, plan_id) REFERENCES plans (tenant, plan_id)
);
