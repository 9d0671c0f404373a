-- +goose Up
SET lock_timeout = '5s';
-- expect: foreign-key-without-not-valid
ALTER TABLE orders ADD COLUMN coupon_id bigint REFERENCES coupons (id);
