-- +goose Up
SET lock_timeout = '5s';
-- expect: add-column-volatile-default
ALTER TABLE orders ADD COLUMN public_id uuid NOT NULL DEFAULT gen_random_uuid();
-- expect: add-column-volatile-default
ALTER TABLE orders ADD COLUMN imported_at timestamptz DEFAULT clock_timestamp();
-- expect: add-column-volatile-default
ALTER TABLE orders ADD COLUMN seq bigserial;
-- expect: add-column-volatile-default
ALTER TABLE orders ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY;
