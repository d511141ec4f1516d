//! BPF map values decoded with the program's own BTF: a DATASEC (`.bss`,
//! `.data`, `.rodata`) into named variables, any other type into a
//! [`Value`]. The BTF and the bytes come from the guest: every step is
//! bounded (depth, elements per array, values per map, string length) and
//! a type that does not fit its bytes is said so, never a panic.

use std::string::{String, ToString};
use std::vec::Vec;

use btf_rs::{Btf, BtfType, Type};
use serde::{Deserialize, Serialize};

/// Deepest nesting decoded (structs in arrays in structs ...).
const MAX_DEPTH: u32 = 8;
/// Modifiers/typedefs followed to reach a type.
const MAX_CHAIN: u32 = 16;
/// Elements of one array shown.
pub const MAX_ELEMS: usize = 64;
/// Values one map's decoding produces at most.
pub const MAX_VALUES: u32 = 16384;
/// Values one variable of a DATASEC takes at most, so a large array does
/// not leave the variables after it undecoded.
pub const MAX_VAR_VALUES: u32 = 512;
/// Longest string kept from a `char` array.
const MAX_STR: usize = 256;

/// One decoded value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A `bool`.
    Bool(bool),
    /// A `char` array up to its NUL (lossy UTF-8).
    Str(String),
    /// An enum constant's name, or its number when it has none.
    Enum(String),
    /// A float, as printed.
    Float(String),
    /// A pointer (a guest address).
    Ptr(u64),
    /// An array's first elements and how many more it has.
    Array {
        /// Elements shown.
        items: Vec<Value>,
        /// Elements left out.
        more: u64,
    },
    /// A struct's or union's members.
    Struct(Vec<Field>),
    /// Bytes no type describes (hex), e.g. a 128-bit integer.
    Bytes(String),
    /// Not decoded: the reason (too deep, budget spent, bytes too short,
    /// an unknown type).
    Undecoded(String),
}

/// A named member or variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// Its name (empty for an anonymous member).
    pub name: String,
    /// Its value.
    pub value: Value,
}

/// Parse raw program BTF and decode type `id` over `bytes`: a DATASEC's
/// variables as a [`Value::Struct`], any other type as its value; `None`
/// when the BTF does not parse.
pub fn decode_raw(btf: &[u8], id: u32, bytes: &[u8]) -> Option<Value> {
    let btf = Btf::from_bytes(btf).ok()?;
    let mut d = Decoder::new(&btf);
    Some(match d.datasec(id, bytes) {
        Some(vars) => Value::Struct(vars),
        None => d.value(id, bytes, 0),
    })
}

/// A decoder over one program BTF, with a budget of values.
pub struct Decoder<'b> {
    btf: &'b Btf,
    /// Values left to the current variable (or the whole value).
    left: u32,
    /// Values left to the whole decoding.
    total: u32,
}

impl<'b> Decoder<'b> {
    /// A decoder producing at most [`MAX_VALUES`] values.
    pub fn new(btf: &'b Btf) -> Self {
        Self {
            btf,
            left: MAX_VALUES,
            total: MAX_VALUES,
        }
    }

    /// The variables of DATASEC `id` over the section's `bytes`; `None`
    /// when `id` is not a DATASEC.
    pub fn datasec(&mut self, id: u32, bytes: &[u8]) -> Option<Vec<Field>> {
        let Ok(Type::Datasec(ds)) = self.btf.resolve_type_by_id(id) else {
            return None;
        };
        let mut out = Vec::new();
        for v in &ds.variables {
            let Ok(Type::Var(var)) = self.btf.resolve_chained_type(v) else {
                continue;
            };
            let name = self.btf.resolve_name(&var).unwrap_or_default();
            let start = v.offset() as usize;
            self.left = MAX_VAR_VALUES.min(self.total);
            let value = match (
                var.get_type_id(),
                start
                    .checked_add(v.size())
                    .and_then(|end| bytes.get(start..end)),
            ) {
                (Some(t), Some(b)) => self.value(t, b, 0),
                _ => Value::Undecoded("outside the map's value".into()),
            };
            out.push(Field { name, value });
        }
        Some(out)
    }

    /// Type `id` over `bytes`.
    pub fn value(&mut self, id: u32, bytes: &[u8], depth: u32) -> Value {
        if self.left == 0 || self.total == 0 {
            return Value::Undecoded("value budget spent".into());
        }
        self.left -= 1;
        self.total -= 1;
        if depth > MAX_DEPTH {
            return Value::Undecoded("nested too deep".into());
        }
        let Some(t) = self.resolve(id) else {
            return Value::Undecoded(std::format!("type {id} unknown"));
        };
        let short = || Value::Undecoded("bytes too short for its type".into());
        match t {
            Type::Int(i) => match bytes.get(..i.size()) {
                Some(b) => int(b, i.is_signed(), i.is_bool()),
                None => short(),
            },
            Type::Enum(e) => {
                let Some(b) = bytes.get(..e.size()) else {
                    return short();
                };
                let v = le(b);
                let name = e
                    .members
                    .iter()
                    .find(|m| u64::from(m.val()) == v & 0xffff_ffff)
                    .and_then(|m| self.btf.resolve_name(m).ok());
                Value::Enum(name.unwrap_or_else(|| v.to_string()))
            }
            Type::Enum64(e) => {
                let Some(b) = bytes.get(..e.size()) else {
                    return short();
                };
                let v = le(b);
                let name = e
                    .members
                    .iter()
                    .find(|m| m.val() == v)
                    .and_then(|m| self.btf.resolve_name(m).ok());
                Value::Enum(name.unwrap_or_else(|| v.to_string()))
            }
            Type::Ptr(_) => match bytes.get(..8) {
                Some(b) => Value::Ptr(le(b)),
                None => short(),
            },
            Type::Float(f) => match (f.size(), bytes) {
                (4, [a, b, c, d, ..]) => {
                    Value::Float(f32::from_le_bytes([*a, *b, *c, *d]).to_string())
                }
                (8, b) => match b.first_chunk::<8>() {
                    Some(b) => Value::Float(f64::from_le_bytes(*b).to_string()),
                    None => short(),
                },
                _ => short(),
            },
            Type::Array(a) => self.array(&a, bytes, depth),
            Type::Struct(s) | Type::Union(s) => {
                let mut fields = Vec::new();
                for m in &s.members {
                    if self.left == 0 || self.total == 0 {
                        fields.push(Field {
                            name: String::new(),
                            value: Value::Undecoded("value budget spent".into()),
                        });
                        break;
                    }
                    let name = self.btf.resolve_name(m).unwrap_or_default();
                    let value = match m.get_type_id() {
                        Some(t) => self.member(t, m.bit_offset(), m.bitfield_size(), bytes, depth),
                        None => Value::Undecoded("member without a type".into()),
                    };
                    fields.push(Field { name, value });
                }
                Value::Struct(fields)
            }
            other => Value::Undecoded(std::format!("a {}", other.name())),
        }
    }

    fn member(
        &mut self,
        t: u32,
        bit_offset: u32,
        bits: Option<u32>,
        bytes: &[u8],
        depth: u32,
    ) -> Value {
        let start = (bit_offset / 8) as usize;
        match bits.filter(|&b| b > 0) {
            None => match bytes.get(start..) {
                Some(b) => self.value(t, b, depth + 1),
                None => Value::Undecoded("member past its struct".into()),
            },
            Some(n) if n <= 64 => {
                // A bitfield: its bits from the little-endian word holding it.
                let shift = bit_offset % 8;
                let mut word = [0u8; 16];
                for (d, s) in word.iter_mut().zip(bytes.iter().skip(start)) {
                    *d = *s;
                }
                let v = u128::from_le_bytes(word) >> shift;
                let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
                Value::Uint((v as u64) & mask)
            }
            Some(_) => Value::Undecoded("bitfield wider than 64 bits".into()),
        }
    }

    fn array(&mut self, a: &btf_rs::Array, bytes: &[u8], depth: u32) -> Value {
        let Some(elem) = a.get_type_id() else {
            return Value::Undecoded("array without a type".into());
        };
        let len = a.len();
        let Some(size) = self.size_of(elem) else {
            return Value::Undecoded("array of a type without a size".into());
        };
        if let Some(Type::Int(i)) = self.resolve(elem)
            && i.size() == 1
            && (i.is_char() || self.btf.resolve_name(&i).is_ok_and(|n| n == "char"))
        {
            let b = bytes.get(..len.min(bytes.len())).unwrap_or_default();
            let end = b
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(b.len())
                .min(MAX_STR);
            let text = b.get(..end).unwrap_or_default();
            return Value::Str(String::from_utf8_lossy(text).into_owned());
        }
        let mut items = Vec::new();
        for i in 0..len.min(MAX_ELEMS) {
            if self.left == 0 || self.total == 0 {
                break;
            }
            let Some(b) = i
                .checked_mul(size)
                .and_then(|s| bytes.get(s..s.checked_add(size)?))
            else {
                break;
            };
            items.push(self.value(elem, b, depth + 1));
        }
        let more = (len - items.len()) as u64;
        Value::Array { items, more }
    }

    /// The type `id` names, through typedefs and modifiers.
    fn resolve(&self, id: u32) -> Option<Type> {
        let mut t = self.btf.resolve_type_by_id(id).ok()?;
        for _ in 0..MAX_CHAIN {
            match &t {
                Type::Typedef(_)
                | Type::Volatile(_)
                | Type::Const(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let b = t.as_btf_type()?;
                    t = self.btf.resolve_chained_type(b).ok()?;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bytes of type `id`, when it has a size.
    fn size_of(&self, id: u32) -> Option<usize> {
        self.size_within(id, MAX_CHAIN)
    }

    fn size_within(&self, id: u32, depth: u32) -> Option<usize> {
        Some(match self.resolve(id)? {
            Type::Int(i) => i.size(),
            Type::Enum(e) => e.size(),
            Type::Enum64(e) => e.size(),
            Type::Ptr(_) => 8,
            Type::Float(f) => f.size(),
            Type::Struct(s) | Type::Union(s) => s.size(),
            Type::Array(a) => a
                .len()
                .checked_mul(self.size_within(a.get_type_id()?, depth.checked_sub(1)?)?)?,
            _ => return None,
        })
    }
}

fn le(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    for (d, s) in w.iter_mut().zip(b) {
        *d = *s;
    }
    u64::from_le_bytes(w)
}

fn int(b: &[u8], signed: bool, is_bool: bool) -> Value {
    if b.is_empty() {
        return Value::Undecoded("an integer of no bytes".into());
    }
    if b.len() > 8 {
        return Value::Bytes(b.iter().rev().map(|x| std::format!("{x:02x}")).collect());
    }
    let v = le(b);
    if is_bool {
        return Value::Bool(v != 0);
    }
    if signed {
        let bits = 64 - 8 * b.len() as u32;
        Value::Int(((v << bits) as i64) >> bits)
    } else {
        Value::Uint(v)
    }
}

#[cfg(test)]
mod tests {
    use std::vec;

    use super::*;

    /// Raw BTF from `(name, info, size_or_type, extra words)` types; the
    /// names are appended to the string section in order.
    fn btf(types: &[(&str, u32, u32, &[u32])]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut words = Vec::new();
        for (name, info, st, extra) in types {
            let off = if name.is_empty() {
                0
            } else {
                let o = strings.len() as u32;
                strings.extend(name.as_bytes());
                strings.push(0);
                o
            };
            words.extend([off, *info, *st]);
            words.extend(*extra);
        }
        let types: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut raw = vec![0x9f, 0xeb, 1, 0];
        let (tl, sl) = (types.len() as u32, strings.len() as u32);
        for w in [24u32, 0, tl, tl, sl] {
            raw.extend(w.to_le_bytes());
        }
        raw.extend(types);
        raw.extend(strings);
        raw
    }

    const fn kind(k: u32, vlen: u32) -> u32 {
        (k << 24) | vlen
    }

    /// 1 u32, 2 bool, 3 struct pair { u32 a; bool on; u32 flag:3 (bit 64) },
    /// 4 pair[3], 5 void *.
    fn fixture() -> Vec<u8> {
        btf(&[
            ("unsigned int", kind(1, 0), 4, &[32]),
            ("_Bool", kind(1, 0), 1, &[(4 << 24) | 8]),
            (
                "pair",
                kind(4, 3) | (1 << 31),
                12,
                // kind_flag: offsets carry bitfield sizes (size << 24).
                &[0, 1, 0, 0, 2, 32, 0, 1, (3 << 24) | 64],
            ),
            ("", kind(3, 0), 0, &[3, 1, 3]),
            ("", kind(2, 0), 0, &[]),
        ])
    }

    #[test]
    fn structs_arrays_bools_bitfields_and_pointers_decode() {
        let raw = fixture();
        let b = Btf::from_bytes(&raw).unwrap();
        let mut d = Decoder::new(&b);
        let mut bytes = Vec::new();
        // The bits past the 3-bit field (0xf8) must not show.
        for (a, on, flag) in [(1u32, 1u8, 5u8), (2, 0, 0xff), (3, 1, 0)] {
            bytes.extend(a.to_le_bytes());
            bytes.extend([on, 0, 0, 0]);
            bytes.extend([flag, 0, 0, 0]);
        }
        let pair = |a, on, flag| {
            Value::Struct(vec![
                Field {
                    name: "".into(),
                    value: Value::Uint(a),
                },
                Field {
                    name: "".into(),
                    value: Value::Bool(on),
                },
                Field {
                    name: "".into(),
                    value: Value::Uint(flag),
                },
            ])
        };
        assert_eq!(
            d.value(4, &bytes, 0),
            Value::Array {
                items: vec![pair(1, true, 5), pair(2, false, 7), pair(3, true, 0)],
                more: 0
            }
        );
        assert_eq!(
            d.value(5, &0xffff_8880_0000_1000u64.to_le_bytes(), 0),
            Value::Ptr(0xffff_8880_0000_1000)
        );
        // Too few bytes for the type: said, not guessed.
        assert!(matches!(d.value(1, &[1, 2], 0), Value::Undecoded(_)));
    }

    #[test]
    fn the_value_budget_bounds_the_work() {
        let raw = fixture();
        let b = Btf::from_bytes(&raw).unwrap();
        let mut d = Decoder::new(&b);
        d.left = 3;
        let v = d.value(4, &[0u8; 36], 0);
        let Value::Array { items, .. } = v else {
            panic!("{v:?}")
        };
        // The array took one value, its first struct one, its member one.
        assert_eq!(items.len(), 1);
        assert_eq!(
            d.value(1, &[0; 4], 0),
            Value::Undecoded("value budget spent".into())
        );
    }

    #[test]
    fn unknown_types_and_garbage_btf_are_said() {
        let raw = fixture();
        let b = Btf::from_bytes(&raw).unwrap();
        let mut d = Decoder::new(&b);
        assert!(matches!(d.value(999, &[0; 8], 0), Value::Undecoded(_)));
        assert_eq!(d.datasec(1, &[0; 8]), None, "type 1 is no DATASEC");
        assert_eq!(decode_raw(b"not btf", 1, &[]), None);
    }
}
