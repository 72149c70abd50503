//! The domain's names and ids as SQL text: each binds and reads as the string it wraps.
//!
//! Owns only these conversions, so the domain's newtypes know nothing of SQL.

use sqlx::any::{AnyTypeInfo, AnyValueRef};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Any, Decode, Encode, Type};

use crate::domain::names::*;

macro_rules! sql_text {
    ($($t:ty),* $(,)?) => {$(
        impl Type<Any> for $t {
            fn type_info() -> AnyTypeInfo {
                <String as Type<Any>>::type_info()
            }

            fn compatible(ty: &AnyTypeInfo) -> bool {
                <String as Type<Any>>::compatible(ty)
            }
        }

        impl<'q> Encode<'q, Any> for $t {
            fn encode_by_ref(
                &self,
                buf: &mut <Any as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<IsNull, BoxDynError> {
                <String as Encode<'q, Any>>::encode(self.as_str().to_owned(), buf)
            }
        }

        impl<'r> Decode<'r, Any> for $t {
            fn decode(value: AnyValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(<$t>::new(<String as Decode<'r, Any>>::decode(value)?))
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
