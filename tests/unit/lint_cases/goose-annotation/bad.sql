-- +goose Down
DROP TABLE coupons;
-- expect: goose-annotation
-- +goose Up
CREATE TABLE coupons (id bigint PRIMARY KEY);
