-- Backfill in batches, each committed on its own, so no row stays locked for long.
-- +goose NO TRANSACTION
-- +goose Up
-- +goose StatementBegin
DO $$
DECLARE
    touched integer;
BEGIN
    LOOP
        UPDATE orders SET public_id = gen_random_uuid()
        WHERE id IN (SELECT id FROM orders WHERE public_id IS NULL LIMIT 5000);
        GET DIAGNOSTICS touched = ROW_COUNT;
        EXIT WHEN touched = 0;
        COMMIT;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
SELECT 1;
