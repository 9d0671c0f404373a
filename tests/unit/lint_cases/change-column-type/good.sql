-- +goose Up
SET lock_timeout = '5s';
ALTER TABLE payments ADD COLUMN amount_exact numeric(12, 2);
