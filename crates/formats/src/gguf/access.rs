//! Typed metadata accessors on [`GgufFile`].
//!
//! Integers are accepted whatever their stored width or signedness when the value fits the
//! requested type (converters write `u32` or `i32` or `u64` for the same key); floats accept
//! any float or integer. `get_*` fails with `MissingKey` when the key is absent; `opt_*` gives
//! `None` then. Both fail with `WrongType`, naming the key, when the value does not convert.

use super::reader::GgufFile;
use super::value::Value;
use crate::error::{FormatError, Result};

fn wrong(key: &str, expected: &'static str, v: &Value) -> FormatError {
    FormatError::WrongType {
        key: key.to_string(),
        expected,
        found: v.describe(),
    }
}

fn to_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|x| u32::try_from(x).ok())
}

fn to_i32(v: &Value) -> Option<i32> {
    v.as_i64().and_then(|x| i32::try_from(x).ok())
}

fn to_f32(v: &Value) -> Option<f32> {
    v.as_f64().map(|x| x as f32)
}

/// Convert every element of an array value, or `None` if it is not an array or one element
/// does not convert.
fn array_of<'a, T>(v: &'a Value, f: impl Fn(&'a Value) -> Option<T>) -> Option<Vec<T>> {
    v.as_array()?.iter().map(f).collect()
}

macro_rules! accessors {
    ($( $get:ident, $opt:ident -> $t:ty, $expected:literal, $conv:expr; )*) => {
        impl GgufFile {
            $(
                #[doc = concat!("The value of `key` as ", $expected, "; `MissingKey` when absent.")]
                pub fn $get(&self, key: &str) -> Result<$t> {
                    self.$opt(key)?
                        .ok_or_else(|| FormatError::MissingKey(key.to_string()))
                }

                #[doc = concat!("The value of `key` as ", $expected, ", `None` when absent.")]
                pub fn $opt(&self, key: &str) -> Result<Option<$t>> {
                    let Some(v) = self.get(key) else {
                        return Ok(None);
                    };
                    let conv: fn(&Value) -> Option<$t> = $conv;
                    conv(v).map(Some).ok_or_else(|| wrong(key, $expected, v))
                }
            )*
        }
    };
}

accessors! {
    get_u32, opt_u32 -> u32, "an integer fitting u32", to_u32;
    get_i32, opt_i32 -> i32, "an integer fitting i32", to_i32;
    get_u64, opt_u64 -> u64, "an integer fitting u64", |v| v.as_u64();
    get_i64, opt_i64 -> i64, "an integer fitting i64", |v| v.as_i64();
    get_f32, opt_f32 -> f32, "a number", to_f32;
    get_f64, opt_f64 -> f64, "a number", |v| v.as_f64();
    get_bool, opt_bool -> bool, "a bool", |v| v.as_bool();
    get_str, opt_str -> &str, "a string", |v| v.as_str();
    get_str_array, opt_str_array -> Vec<&str>, "an array of strings", |v| array_of(v, Value::as_str);
    get_f32_array, opt_f32_array -> Vec<f32>, "an array of numbers", |v| array_of(v, to_f32);
    get_i32_array, opt_i32_array -> Vec<i32>, "an array of integers fitting i32", |v| array_of(v, to_i32);
    get_u32_array, opt_u32_array -> Vec<u32>, "an array of integers fitting u32", |v| array_of(v, to_u32);
    get_array, opt_array -> &[Value], "an array", |v| v.as_array();
}
