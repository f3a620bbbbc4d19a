-- Shipments: the example service's own table, beside sqlrepo's. An order ships once, to one
-- address; the shipment references sqlrepo's `orders`, so it cannot exist without its order,
-- and the order cannot be deleted while it has one. The constraints are named so that errors
-- can name them (a second shipment of an order is `Duplicate { constraint:
-- "shipments.order_id" }`).
CREATE TABLE shipments (
    id       INTEGER PRIMARY KEY,
    order_id INTEGER NOT NULL
        CONSTRAINT shipments_order_exists REFERENCES orders (id),
    address  TEXT    NOT NULL
        CONSTRAINT shipments_address_length
            CHECK (length(trim(address)) > 0 AND length(address) <= 512),
    CONSTRAINT shipments_order_unique UNIQUE (order_id)
) STRICT;
