-- +goose Up
CREATE TABLE refunds (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES orders (id),
    amount numeric(12, 2) NOT NULL
);
CREATE INDEX refunds_order_id_idx ON refunds (order_id);
