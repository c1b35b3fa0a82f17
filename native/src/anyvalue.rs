//! AnyValue → one string, exactly as `streams.otlp.values.any_value_str` writes it.
//!
//! Strings as they are; bool `true`/`false`; int decimal; double as Go's
//! `strconv.FormatFloat(v, 'f', -1, 64)` (shortest round-trip digits, never an exponent; `NaN`,
//! `+Inf`, `-Inf`); bytes base64; arrays and kvlists JSON as orjson writes it with sorted keys
//! (doubles in orjson's notation, non-finite ones as the strings above, bytes base64, a value
//! without a kind `null`). An AnyValue sent as several occurrences is read as protobuf merges
//! them: the last oneof member set wins, and occurrences of the same array or kvlist member
//! concatenate their elements.

use crate::wire::{fields, Result, Value, WireError};

/// The value of an AnyValue after merging its occurrences.
pub enum Any<'a> {
    /// No member set (or `string_value_strindex`, which the decoder stores as no value).
    Empty,
    Str(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// The ArrayValue occurrences (merged: their elements one after the other).
    Array(Vec<&'a [u8]>),
    /// The KeyValueList occurrences (merged likewise).
    Kvlist(Vec<&'a [u8]>),
}

/// Merge AnyValue occurrences (the bytes of each, in wire order) as protobuf parses them.
pub fn parse_any<'a>(segments: &[&'a [u8]], depth: usize) -> Result<Any<'a>> {
    let mut out = Any::Empty;
    for segment in segments {
        for f in fields(segment, depth) {
            let f = f?;
            out = match (f.number, f.value) {
                (1, Value::Len(s)) => Any::Str(s),
                (2, Value::Varint(v)) => Any::Bool(v != 0),
                (3, Value::Varint(v)) => Any::Int(v as i64),
                (4, Value::Fixed64(v)) => Any::Double(f64::from_bits(v)),
                (5, Value::Len(s)) => match out {
                    Any::Array(mut parts) => {
                        parts.push(s);
                        Any::Array(parts)
                    }
                    _ => Any::Array(vec![s]),
                },
                (6, Value::Len(s)) => match out {
                    Any::Kvlist(mut parts) => {
                        parts.push(s);
                        Any::Kvlist(parts)
                    }
                    _ => Any::Kvlist(vec![s]),
                },
                (7, Value::Len(s)) => Any::Bytes(s),
                (8, Value::Varint(_)) => Any::Empty,
                _ => continue, // unknown field, or a member sent with another wire type
            };
        }
    }
    Ok(out)
}

/// A KeyValue: its key (the last occurrence) and its value's occurrences.
pub fn key_value<'a>(bytes: &'a [u8], depth: usize, values: &mut Vec<&'a [u8]>) -> Result<&'a [u8]> {
    let mut key: &[u8] = b"";
    values.clear();
    for f in fields(bytes, depth) {
        let f = f?;
        match (f.number, f.value) {
            (1, Value::Len(s)) => key = s,
            (2, Value::Len(s)) => values.push(s),
            _ => {}
        }
    }
    Ok(key)
}

/// The string of a value: borrowed from the input for a string, else written to `out`.
pub enum Text<'a> {
    Borrowed(&'a [u8]),
    Written,
}

/// `any_value_str` of the value whose occurrences are `segments` (none: the empty string).
pub fn value_text<'a>(segments: &[&'a [u8]], depth: usize, out: &mut Vec<u8>) -> Result<Text<'a>> {
    out.clear();
    if segments.is_empty() {
        return Ok(Text::Borrowed(b""));
    }
    match parse_any(segments, depth)? {
        Any::Empty => return Ok(Text::Borrowed(b"")),
        Any::Str(s) => return Ok(Text::Borrowed(s)),
        Any::Bool(b) => return Ok(Text::Borrowed(if b { b"true" } else { b"false" })),
        Any::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Any::Double(d) => format_double(d, out),
        Any::Bytes(b) => base64(b, out),
        Any::Array(parts) => json_array(&parts, depth + 1, out)?,
        Any::Kvlist(parts) => json_kvlist(&parts, depth + 1, out)?,
    }
    Ok(Text::Written)
}

// ---------------------------------------------------------------- doubles

/// The shortest round-trip digits of a finite double (the closest of them, ties to even: what
/// Python's repr and orjson both write) and its decimal point position `kk` (value =
/// 0.DIGITS × 10^kk), plus whether it is negative. Zero is ("0", 1).
fn shortest(value: f64) -> (bool, Vec<u8>, i32) {
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(value).as_bytes();
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let (mantissa, exponent) = match text.iter().position(|&b| b == b'e') {
        Some(e) => (&text[..e], std::str::from_utf8(&text[e + 1..]).ok().and_then(|s| s.parse().ok()).unwrap_or(0)),
        None => (text, 0i32),
    };
    let integer_len = mantissa.iter().position(|&b| b == b'.').unwrap_or(mantissa.len()) as i32;
    let all: Vec<u8> = mantissa.iter().copied().filter(u8::is_ascii_digit).collect();
    let leading = all.iter().take_while(|&&b| b == b'0').count();
    let mut digits = all[leading..].to_vec();
    while digits.last() == Some(&b'0') {
        digits.pop();
    }
    if digits.is_empty() {
        return (negative, vec![b'0'], 1);
    }
    (negative, digits, integer_len + exponent - leading as i32)
}

fn zeros(out: &mut Vec<u8>, n: i32) {
    out.extend(std::iter::repeat_n(b'0', n.max(0) as usize));
}

/// Go's FormatFloat(v, 'f', -1, 64), which `values.format_double` reproduces: plain decimal.
pub fn format_double(value: f64, out: &mut Vec<u8>) {
    if value.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if value.is_infinite() {
        out.extend_from_slice(if value > 0.0 { b"+Inf" } else { b"-Inf" });
        return;
    }
    let (negative, digits, kk) = shortest(value);
    let n = digits.len() as i32;
    if negative {
        out.push(b'-');
    }
    if kk <= 0 {
        out.extend_from_slice(b"0.");
        zeros(out, -kk);
        out.extend_from_slice(&digits);
    } else if kk >= n {
        out.extend_from_slice(&digits);
        zeros(out, kk - n);
    } else {
        out.extend_from_slice(&digits[..kk as usize]);
        out.push(b'.');
        out.extend_from_slice(&digits[kk as usize..]);
    }
}

/// A finite double as orjson writes it: plain decimal with a fraction (`1.0`) up to 16 integer
/// digits and down to 0.0000d, else d.ddde±x.
fn json_double(value: f64, out: &mut Vec<u8>) {
    let (negative, digits, kk) = shortest(value);
    let n = digits.len() as i32;
    if negative {
        out.push(b'-');
    }
    if n <= kk && kk <= 16 {
        out.extend_from_slice(&digits);
        zeros(out, kk - n);
        out.extend_from_slice(b".0");
    } else if 0 < kk && kk <= 16 {
        out.extend_from_slice(&digits[..kk as usize]);
        out.push(b'.');
        out.extend_from_slice(&digits[kk as usize..]);
    } else if -5 < kk && kk <= 0 {
        out.extend_from_slice(b"0.");
        zeros(out, -kk);
        out.extend_from_slice(&digits);
    } else {
        out.push(digits[0]);
        if n > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        let e = kk - 1;
        out.push(b'e');
        out.push(if e < 0 { b'-' } else { b'+' });
        out.extend_from_slice(e.unsigned_abs().to_string().as_bytes());
    }
}

// ---------------------------------------------------------------- bytes

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (Python's base64.b64encode).
pub fn base64(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(data.len().div_ceil(3) * 4);
    let mut chunks = data.chunks_exact(3);
    for c in &mut chunks {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        out.extend_from_slice(&[
            B64[(n >> 18) as usize & 63],
            B64[(n >> 12) as usize & 63],
            B64[(n >> 6) as usize & 63],
            B64[n as usize & 63],
        ]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.extend_from_slice(&[B64[(n >> 18) as usize & 63], B64[(n >> 12) as usize & 63], b'=', b'=']);
        }
        [a, b] => {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.extend_from_slice(&[
                B64[(n >> 18) as usize & 63],
                B64[(n >> 12) as usize & 63],
                B64[(n >> 6) as usize & 63],
                b'=',
            ]);
        }
        _ => {}
    }
}

// ---------------------------------------------------------------- JSON, as orjson writes it

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A JSON string (the input is valid UTF-8): `"` and `\` escaped, control characters as
/// \b \t \n \f \r or \u00XX, everything else as it is.
fn json_string(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut start = 0;
    for (i, &c) in s.iter().enumerate() {
        if c >= 0x20 && c != b'"' && c != b'\\' {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        start = i + 1;
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0d => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]),
        }
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

/// Nesting the JSON writer allows (protobuf's limit, checked before, keeps values far shallower:
/// each array level is two messages deep).
const MAX_JSON_DEPTH: usize = 128;

/// `any_value_raw` of one value, as JSON.
fn json_value(segments: &[&[u8]], depth: usize, out: &mut Vec<u8>) -> Result<()> {
    if depth > MAX_JSON_DEPTH {
        return Err(WireError::TooDeep);
    }
    match parse_any(segments, depth)? {
        Any::Empty => out.extend_from_slice(b"null"),
        Any::Str(s) => json_string(s, out),
        Any::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Any::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Any::Double(d) if d.is_finite() => json_double(d, out),
        Any::Double(d) => {
            let mut text = Vec::new();
            format_double(d, &mut text);
            json_string(&text, out);
        }
        Any::Bytes(b) => {
            let mut text = Vec::new();
            base64(b, &mut text);
            json_string(&text, out);
        }
        Any::Array(parts) => json_array(&parts, depth + 1, out)?,
        Any::Kvlist(parts) => json_kvlist(&parts, depth + 1, out)?,
    }
    Ok(())
}

/// The elements of merged ArrayValue occurrences, as a JSON list.
fn json_array(parts: &[&[u8]], depth: usize, out: &mut Vec<u8>) -> Result<()> {
    out.push(b'[');
    let mut first = true;
    for part in parts {
        for f in fields(part, depth) {
            let f = f?;
            if let (1, Value::Len(element)) = (f.number, f.value) {
                if !first {
                    out.push(b',');
                }
                first = false;
                json_value(&[element], depth + 1, out)?;
            }
        }
    }
    out.push(b']');
    Ok(())
}

/// The entries of merged KeyValueList occurrences, as a JSON object: keys sorted, a key sent
/// twice keeps its last value (a Python dict built in order, dumped with OPT_SORT_KEYS).
fn json_kvlist(parts: &[&[u8]], depth: usize, out: &mut Vec<u8>) -> Result<()> {
    let mut entries: Vec<(&[u8], Vec<&[u8]>)> = Vec::new();
    for part in parts {
        for f in fields(part, depth) {
            let f = f?;
            if let (1, Value::Len(kv)) = (f.number, f.value) {
                let mut values = Vec::new();
                let key = key_value(kv, depth + 1, &mut values)?;
                entries.push((key, values));
            }
        }
    }
    entries.sort_by(|a, b| a.0.cmp(b.0)); // stable: equal keys keep their order, the last wins
    out.push(b'{');
    let mut first = true;
    for (i, (key, values)) in entries.iter().enumerate() {
        if entries.get(i + 1).is_some_and(|next| next.0 == *key) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        json_string(key, out);
        out.push(b':');
        if values.is_empty() {
            out.extend_from_slice(b"null");
        } else {
            json_value(values, depth + 2, out)?;
        }
    }
    out.push(b'}');
    Ok(())
}
