-- +goose Up
SET LOCAL lock_timeout = '3s';

CREATE TABLE coupons (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code        text NOT NULL UNIQUE,
    percent_off smallint NOT NULL CHECK (percent_off BETWEEN 1 AND 100),
    expires_at  timestamptz
);

ALTER TABLE orders ADD COLUMN coupon_id bigint;
-- Only new rows are checked now; 009 validates the rest without blocking writes.
ALTER TABLE orders ADD CONSTRAINT orders_coupon_id_fkey
    FOREIGN KEY (coupon_id) REFERENCES coupons (id) NOT VALID;

-- +goose Down
SET LOCAL lock_timeout = '3s';
ALTER TABLE orders DROP COLUMN coupon_id;
DROP TABLE coupons;
