// @generated automatically by Diesel CLI.

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        user_id -> Uuid,
        name -> Text,
        prefix -> Text,
        key_hash -> Text,
        created_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    api_upstreams (api_id) {
        api_id -> Int4,
        url -> Text,
        timeout_ms -> Int4,
        connect_timeout_ms -> Int4,
        max_body_bytes -> Int8,
        preserve_host -> Bool,
        signing_secret -> Text,
        previous_signing_secret -> Nullable<Text>,
        previous_secret_expires_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    apis (id) {
        id -> Int4,
        slug -> Text,
        method -> Text,
        route -> Text,
        name -> Text,
        description -> Text,
        active -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    closed_periods (period) {
        period -> Date,
        closed_at -> Timestamptz,
        invoices_issued -> Int4,
    }
}

diesel::table! {
    credit_movements (id) {
        id -> Uuid,
        user_id -> Uuid,
        kind -> Text,
        amount -> Numeric,
        currency -> Text,
        reference -> Nullable<Text>,
        period -> Nullable<Date>,
        invoice_id -> Nullable<Uuid>,
        source -> Text,
        recorded_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    invoice_lines (invoice_id, position) {
        invoice_id -> Uuid,
        position -> Int4,
        api_id -> Int4,
        api_slug -> Text,
        api_name -> Text,
        calls -> Int8,
        failed_calls -> Int8,
        billable_calls -> Int8,
        free_calls -> Int8,
        charged_calls -> Int8,
        unit_price -> Numeric,
        amount -> Numeric,
        price_id -> Int4,
        price_effective_from -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    invoice_sequences (year) {
        year -> Int4,
        last_number -> Int4,
    }
}

diesel::table! {
    invoices (id) {
        id -> Uuid,
        number -> Text,
        user_id -> Uuid,
        period -> Date,
        currency -> Text,
        subtotal -> Numeric,
        total -> Numeric,
        amount_paid -> Numeric,
        status -> Text,
        issued_at -> Timestamptz,
        due_at -> Timestamptz,
        paid_at -> Nullable<Timestamptz>,
        voided_at -> Nullable<Timestamptz>,
        billing_email -> Text,
        billing_name -> Text,
        billing_company -> Nullable<Text>,
        billing_address_line1 -> Nullable<Text>,
        billing_address_line2 -> Nullable<Text>,
        billing_city -> Nullable<Text>,
        billing_postal_code -> Nullable<Text>,
        billing_country -> Nullable<Text>,
        billing_tax_id -> Nullable<Text>,
        credit_applied -> Numeric,
        amount_due -> Numeric,
    }
}

diesel::table! {
    payments (id) {
        id -> Uuid,
        invoice_id -> Uuid,
        amount -> Numeric,
        currency -> Text,
        reference -> Text,
        method -> Text,
        source -> Text,
        recorded_by -> Nullable<Uuid>,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    price_tiers (price_id, position) {
        price_id -> Int4,
        position -> Int4,
        up_to -> Nullable<Int8>,
        unit_price -> Numeric,
    }
}

diesel::table! {
    prices (id) {
        id -> Int4,
        api_id -> Int4,
        effective_from -> Timestamptz,
        currency -> Text,
        unit_price -> Numeric,
        free_calls -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    meter_flushes (id) {
        id -> Uuid,
        instance_id -> Uuid,
        rows -> Int4,
        calls -> Int8,
        applied_at -> Timestamptz,
    }
}

diesel::table! {
    refresh_tokens (id) {
        id -> Uuid,
        family_id -> Uuid,
        user_id -> Uuid,
        token_hash -> Text,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        retired_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    usage_daily (user_id, api_id, day) {
        user_id -> Uuid,
        api_id -> Int4,
        day -> Date,
        period -> Date,
        calls -> Int8,
        failed_calls -> Int8,
    }
}

diesel::table! {
    usage_prices (user_id, api_id, period, price_id) {
        user_id -> Uuid,
        api_id -> Int4,
        period -> Date,
        price_id -> Int4,
        calls -> Int8,
        failed_calls -> Int8,
        price_ref -> Nullable<Int4>,
    }
}

diesel::table! {
    usage_records (user_id, api_id, period) {
        user_id -> Uuid,
        api_id -> Int4,
        period -> Date,
        calls -> Int8,
        failed_calls -> Int8,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    spend_leases (user_id, period, instance_id) {
        user_id -> Uuid,
        period -> Date,
        instance_id -> Uuid,
        held -> Numeric,
        renewed_at -> Timestamptz,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Text,
        password_hash -> Text,
        role -> Text,
        status -> Text,
        name -> Text,
        company -> Nullable<Text>,
        address_line1 -> Nullable<Text>,
        address_line2 -> Nullable<Text>,
        city -> Nullable<Text>,
        postal_code -> Nullable<Text>,
        country -> Nullable<Text>,
        tax_id -> Nullable<Text>,
        total_cost -> Numeric,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        credit_balance -> Numeric,
        cap_user -> Nullable<Numeric>,
        cap_finance -> Nullable<Numeric>,
        prepaid_only -> Bool,
    }
}

diesel::table! {
    webhook_events (id) {
        id -> Text,
        event_type -> Text,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    usage_alerts (user_id) {
        user_id -> Uuid,
        thresholds -> Array<Numeric>,
        credits_low_below -> Nullable<Numeric>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_endpoints (id) {
        id -> Uuid,
        user_id -> Nullable<Uuid>,
        url -> Text,
        event_types -> Array<Text>,
        description -> Text,
        secret -> Text,
        previous_secret -> Nullable<Text>,
        previous_secret_expires_at -> Nullable<Timestamptz>,
        disabled_at -> Nullable<Timestamptz>,
        created_by -> Uuid,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    outbound_events (id) {
        id -> Uuid,
        event_type -> Text,
        user_id -> Uuid,
        dedupe_key -> Text,
        payload -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Uuid,
        event_id -> Uuid,
        endpoint_id -> Uuid,
        event_type -> Text,
        state -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        locked_until -> Nullable<Timestamptz>,
        last_attempt_at -> Nullable<Timestamptz>,
        last_status -> Nullable<Int4>,
        last_error -> Nullable<Text>,
        delivered_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_attempts (delivery_id, attempt) {
        delivery_id -> Uuid,
        attempt -> Int4,
        attempted_at -> Timestamptz,
        status -> Nullable<Int4>,
        error -> Nullable<Text>,
        duration_ms -> Int4,
    }
}

diesel::joinable!(api_keys -> users (user_id));
diesel::joinable!(api_upstreams -> apis (api_id));
diesel::joinable!(credit_movements -> users (user_id));
diesel::joinable!(invoice_lines -> apis (api_id));
diesel::joinable!(invoice_lines -> invoices (invoice_id));
diesel::joinable!(invoices -> users (user_id));
diesel::joinable!(payments -> invoices (invoice_id));
diesel::joinable!(payments -> users (recorded_by));
diesel::joinable!(price_tiers -> prices (price_id));
diesel::joinable!(prices -> apis (api_id));
diesel::joinable!(refresh_tokens -> users (user_id));
diesel::joinable!(spend_leases -> users (user_id));
diesel::joinable!(usage_records -> apis (api_id));
diesel::joinable!(usage_records -> users (user_id));
diesel::joinable!(webhook_deliveries -> outbound_events (event_id));
diesel::joinable!(webhook_deliveries -> webhook_endpoints (endpoint_id));
diesel::joinable!(webhook_attempts -> webhook_deliveries (delivery_id));

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    api_upstreams,
    apis,
    closed_periods,
    credit_movements,
    invoice_lines,
    invoice_sequences,
    invoices,
    meter_flushes,
    payments,
    price_tiers,
    prices,
    refresh_tokens,
    spend_leases,
    usage_daily,
    usage_prices,
    usage_records,
    users,
    webhook_events,
    usage_alerts,
    webhook_endpoints,
    outbound_events,
    webhook_deliveries,
    webhook_attempts,
);
