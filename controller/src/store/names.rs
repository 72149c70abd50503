//! The domain's names and ids as SQL text: each binds and reads as the string it wraps.
//!
//! Owns only these conversions, so the domain's newtypes know nothing of SQL.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Sqlite, Type};

use crate::domain::names::*;

macro_rules! sql_text {
    ($($t:ty),* $(,)?) => {$(
        impl Type<Sqlite> for $t {
            fn type_info() -> SqliteTypeInfo {
                <String as Type<Sqlite>>::type_info()
            }

            fn compatible(ty: &SqliteTypeInfo) -> bool {
                <String as Type<Sqlite>>::compatible(ty)
            }
        }

        impl<'q> Encode<'q, Sqlite> for $t {
            fn encode_by_ref(
                &self,
                buf: &mut Vec<SqliteArgumentValue<'q>>,
            ) -> Result<IsNull, BoxDynError> {
                <String as Encode<'q, Sqlite>>::encode_by_ref(&self.as_str().to_owned(), buf)
            }
        }

        impl<'r> Decode<'r, Sqlite> for $t {
            fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(<$t>::new(<String as Decode<'r, Sqlite>>::decode(value)?))
            }
        }
    )*};
}

sql_text!(
    PipelineName,
    StageName,
    EffectKey,
    CommitSha,
    Digest,
    AccountId,
    Arn
);
