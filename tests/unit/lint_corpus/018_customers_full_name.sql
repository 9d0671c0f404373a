-- Expand step of renaming customers.name to full_name: both columns, kept in step by a
-- trigger, until the release that reads full_name is the only one running.
-- +goose Up
SET LOCAL lock_timeout = '3s';
ALTER TABLE customers ADD COLUMN full_name text;

-- +goose StatementBegin
CREATE FUNCTION customers_sync_full_name() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.full_name IS NULL THEN
        NEW.full_name := NEW.name;
    ELSIF NEW.name IS NULL OR NEW.name IS DISTINCT FROM NEW.full_name THEN
        NEW.name := left(NEW.full_name, 64);
    END IF;
    RETURN NEW;
END;
$$;
-- +goose StatementEnd

CREATE TRIGGER customers_sync_full_name BEFORE INSERT OR UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION customers_sync_full_name();

-- +goose Down
SET LOCAL lock_timeout = '3s';
DROP TRIGGER IF EXISTS customers_sync_full_name ON customers;
DROP FUNCTION IF EXISTS customers_sync_full_name();
ALTER TABLE customers DROP COLUMN full_name;
