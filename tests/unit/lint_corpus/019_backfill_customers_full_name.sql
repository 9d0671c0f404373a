-- +goose NO TRANSACTION
-- +goose Up
-- +goose StatementBegin
DO $$
DECLARE
    touched integer;
BEGIN
    LOOP
        UPDATE customers SET full_name = name
        WHERE id IN (SELECT id FROM customers WHERE full_name IS NULL LIMIT 2000);
        GET DIAGNOSTICS touched = ROW_COUNT;
        EXIT WHEN touched = 0;
        COMMIT;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
SELECT 1;
