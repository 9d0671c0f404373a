-- +goose Up
CREATE TABLE order_events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    order_id    bigint      NOT NULL,
    kind        varchar(32) NOT NULL,
    payload     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    happened_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id)
);
CREATE INDEX order_events_order_id_idx ON order_events (order_id, happened_at DESC);
CREATE INDEX order_events_payload_idx ON order_events USING gin (payload jsonb_path_ops);
COMMENT ON TABLE order_events IS 'Append-only; written by the order service, read by reporting.';

-- +goose Down
DROP TABLE order_events;
