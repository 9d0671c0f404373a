-- conveyor:contract
-- +goose Up
SET LOCAL lock_timeout = '3s';
DROP TRIGGER customers_sync_full_name ON customers;
DROP FUNCTION customers_sync_full_name();
ALTER TABLE customers DROP COLUMN name;

-- +goose Down
SET LOCAL lock_timeout = '3s';
ALTER TABLE customers ADD COLUMN name varchar(64);
