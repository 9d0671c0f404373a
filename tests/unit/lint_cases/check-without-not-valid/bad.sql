-- +goose Up
SET lock_timeout = '5s';
-- expect: check-without-not-valid
ALTER TABLE orders ADD CONSTRAINT orders_total_positive CHECK (total >= 0);
