-- +goose Up
SELECT set_config('lock_timeout', '3s', true);
ALTER TABLE orders ADD COLUMN note text;
