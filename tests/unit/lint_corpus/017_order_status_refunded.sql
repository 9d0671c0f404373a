-- ALTER TYPE ... ADD VALUE cannot be used in the transaction that adds it.
-- +goose NO TRANSACTION
-- +goose Up
ALTER TYPE order_status ADD VALUE IF NOT EXISTS 'refunded' AFTER 'shipped';

-- +goose Down
SELECT 1;
