-- +goose Up
ALTER TABLE orders VALIDATE CONSTRAINT orders_currency_not_null;
