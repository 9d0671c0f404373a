-- +goose Up
CREATE TABLE coupons (
    id bigint PRIMARY KEY,
-- expect: syntax-error
    code text NOT NULL UNIQE
);
