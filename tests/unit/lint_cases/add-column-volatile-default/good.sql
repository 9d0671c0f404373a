-- +goose Up
SET lock_timeout = '5s';
-- Non-volatile defaults are stored once in the catalog (PostgreSQL 11+): no rewrite.
ALTER TABLE orders ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE orders ADD COLUMN day date DEFAULT CURRENT_DATE;
ALTER TABLE orders ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN tags text[] NOT NULL DEFAULT '{}';
ALTER TABLE orders ADD COLUMN meta jsonb NOT NULL DEFAULT jsonb_build_object('v', 1);
-- A volatile default for new rows only: existing rows stay NULL until the backfill.
ALTER TABLE orders ADD COLUMN public_id uuid;
ALTER TABLE orders ALTER COLUMN public_id SET DEFAULT gen_random_uuid();
