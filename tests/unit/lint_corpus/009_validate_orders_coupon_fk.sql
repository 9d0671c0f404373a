-- +goose Up
ALTER TABLE orders VALIDATE CONSTRAINT orders_coupon_id_fkey;

-- +goose Down
SELECT 1;
