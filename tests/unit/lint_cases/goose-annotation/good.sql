-- +goose Up
CREATE TABLE coupons (id bigint PRIMARY KEY);
-- +goose Down
DROP TABLE coupons;
