-- +goose Up
SET LOCAL lock_timeout = '3s';
ALTER TABLE customers
    ADD COLUMN phone text,
    ADD COLUMN marketing_opt_in boolean NOT NULL DEFAULT false;

-- +goose Down
SET LOCAL lock_timeout = '3s';
ALTER TABLE customers DROP COLUMN marketing_opt_in, DROP COLUMN phone;
