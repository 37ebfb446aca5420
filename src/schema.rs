// @generated automatically by Diesel CLI.

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
    meter_flushes (id) {
        id -> Uuid,
        instance_id -> Uuid,
        rows -> Int4,
        calls -> Int8,
        applied_at -> Timestamptz,
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
    }
}

diesel::joinable!(usage_records -> apis (api_id));
diesel::joinable!(usage_records -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(apis, meter_flushes, usage_records, users,);
