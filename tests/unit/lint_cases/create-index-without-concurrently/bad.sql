-- +goose Up
-- expect: create-index-without-concurrently
CREATE INDEX orders_created_at_idx ON orders (created_at);
