//! Two checks the label stage makes of every value, made here so that a value nothing can change
//! never reaches Python (streams/stages/labels.py and templating.py are the reference; the tests
//! compare both on generated and fuzzed values):
//!
//! - `maybe_sensitive`: whether a value may hold what a detector looks for. It says yes whenever
//!   the label stage's `_MAYBE_SENSITIVE` pattern (plus its query-secret names) would match, or the
//!   value opens like JSON — except for long digit runs, where it says yes only when some run of
//!   13 to 19 digits passes Luhn's check (the card detector masks nothing else) — and may say yes
//!   more often (non-ASCII text, for one: Python's case-insensitive matching folds some non-ASCII
//!   letters to ASCII ones): a yes sends the value to Python, which decides exactly. A no is
//!   exact: the detectors would leave the value alone.
//! - `template_path`: templating.template_path for values of printable ASCII (0x20..0x7e); None
//!   for other values, which Python templates (its patterns' `\d`, `\s` and `$` read more than
//!   ASCII and line ends).

// The keywords of `_MAYBE_SENSITIVE` (bearer, basic, passw, pwd, passphrase, secret, token, api.?key,
// private.?key) are matched in `maybe_sensitive`, each from its first letter.

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// `word` then "key", with at most one character between them (`api.?key`, `private.?key`).
fn word_then_key(s: &[u8], i: usize, word: &[u8]) -> bool {
    if !starts_with_ignore_case(&s[i..], word) {
        return false;
    }
    let rest = &s[i + word.len()..];
    starts_with_ignore_case(rest, b"key") || (!rest.is_empty() && rest[0] != b'\n' && starts_with_ignore_case(&rest[1..], b"key"))
}

/// Luhn's check over ASCII digits.
fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = (d - b'0') as u32;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Whether the card detector could mask something: it masks runs of 13 to 19 digits, each digit
/// followed by at most one space or dash, that pass Luhn's check. Any such window of any chain of
/// digits says yes (more often than the detector, which takes the longest run only).
fn may_hold_a_card_number(s: &[u8]) -> bool {
    if s.iter().filter(|c| c.is_ascii_digit()).count() < 13 {
        return false; // no chain can be long enough
    }
    // a chain's digits, on the stack unless the chain is long
    let mut small = [0u8; 64];
    let mut long: Vec<u8> = Vec::new();
    let mut n = 0usize;
    let flush = |small: &[u8; 64], long: &mut Vec<u8>, n: &mut usize| -> bool {
        let digits = if *n <= small.len() { &small[..*n] } else { &long[..] };
        let found = digits.len() >= 13
            && (0..digits.len()).any(|a| (13..=19).any(|k| a + k <= digits.len() && luhn(&digits[a..a + k])));
        *n = 0;
        long.clear();
        found
    };
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c.is_ascii_digit() {
            if n < small.len() {
                small[n] = c;
            } else {
                if n == small.len() {
                    long.extend_from_slice(&small);
                }
                long.push(c);
            }
            n += 1;
            i += 1;
            // one space or dash between two digits keeps the chain
            if i + 1 < s.len() && matches!(s[i], b' ' | b'-') && s[i + 1].is_ascii_digit() {
                i += 1;
            }
            continue;
        }
        if flush(&small, &mut long, &mut n) {
            return true;
        }
        i += 1;
    }
    flush(&small, &mut long, &mut n)
}

/// See the module's text. `secrets`: the query-secret names, lowercase.
pub fn maybe_sensitive(s: &[u8], secrets: &[Vec<u8>]) -> bool {
    let first = s.iter().find(|c| !c.is_ascii_whitespace() && **c != 0x0b && !(0x1c..=0x1f).contains(*c));
    if matches!(first, Some(b'{') | Some(b'[')) {
        return true;
    }
    if may_hold_a_card_number(s) {
        return true;
    }
    for (i, &c) in s.iter().enumerate() {
        if c >= 0x80 || c == b'@' {
            return true;
        }
        let rest = &s[i..];
        // a keyword can only start with its own first letter: each letter checks its own
        let hit = match c.to_ascii_lowercase() {
            b'b' => starts_with_ignore_case(rest, b"bearer") || starts_with_ignore_case(rest, b"basic"),
            b'p' => {
                starts_with_ignore_case(rest, b"passw")
                    || starts_with_ignore_case(rest, b"pwd")
                    || starts_with_ignore_case(rest, b"passphrase")
                    || word_then_key(s, i, b"private")
            }
            b's' => starts_with_ignore_case(rest, b"secret"),
            b't' => starts_with_ignore_case(rest, b"token"),
            b'a' => word_then_key(s, i, b"api"),
            b'?' | b'&' | b';' => {
                let after = &s[i + 1..];
                secrets.iter().any(|name| starts_with_ignore_case(after, name) && after.get(name.len()) == Some(&b'='))
            }
            _ => false,
        };
        if hit {
            return true;
        }
    }
    false
}

fn is_hex(c: u8) -> bool {
    c.is_ascii_hexdigit()
}

fn all(s: &[u8], f: impl Fn(u8) -> bool) -> bool {
    s.iter().all(|&c| f(c))
}

/// `^[+-]?\d+(?:[.,]\d+)?$`
fn is_num(s: &[u8]) -> bool {
    let s = s.strip_prefix(b"+").or_else(|| s.strip_prefix(b"-")).unwrap_or(s);
    let digits = |p: &[u8]| !p.is_empty() && all(p, |c| c.is_ascii_digit());
    match s.iter().position(|&c| c == b'.' || c == b',') {
        None => digits(s),
        Some(p) => digits(&s[..p]) && digits(&s[p + 1..]),
    }
}

/// `^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`
fn is_uuid(s: &[u8]) -> bool {
    let mut rest = s;
    for (i, n) in [8usize, 4, 4, 4, 12].into_iter().enumerate() {
        if i > 0 {
            rest = rest.strip_prefix(b"-").unwrap_or(rest);
        }
        if rest.len() < n || !all(&rest[..n], is_hex) {
            return false;
        }
        rest = &rest[n..];
    }
    rest.is_empty()
}

/// `^[^@\s/]+@[^@\s/]+\.[A-Za-z]{2,}$` (printable ASCII: `\s` is the space)
fn is_email(s: &[u8]) -> bool {
    let ok = |c: u8| c != b'@' && c != b' ' && c != b'/';
    let Some(at) = s.iter().position(|&c| c == b'@') else { return false };
    let (local, domain) = (&s[..at], &s[at + 1..]);
    if local.is_empty() || !all(local, ok) || !all(domain, ok) {
        return false;
    }
    match domain.iter().rposition(|&c| c == b'.') {
        Some(dot) => dot > 0 && domain.len() - dot > 2 && all(&domain[dot + 1..], |c| c.is_ascii_alphabetic()),
        None => false,
    }
}

/// `^(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?$`
fn is_ipv4(s: &[u8]) -> bool {
    let (addr, port) = match s.iter().position(|&c| c == b':') {
        Some(p) => (&s[..p], Some(&s[p + 1..])),
        None => (s, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !all(port, |c| c.is_ascii_digit()) {
            return false;
        }
    }
    let parts: Vec<&[u8]> = addr.split(|&c| c == b'.').collect();
    parts.len() == 4 && parts.iter().all(|p| (1..=3).contains(&p.len()) && all(p, |c| c.is_ascii_digit()))
}

/// `^\[?[0-9a-fA-F]*:[0-9a-fA-F:]+\]?$`
fn is_ipv6(s: &[u8]) -> bool {
    let s = s.strip_prefix(b"[").unwrap_or(s);
    let s = s.strip_suffix(b"]").unwrap_or(s);
    if !all(s, |c| is_hex(c) || c == b':') {
        return false;
    }
    matches!(s.iter().position(|&c| c == b':'), Some(p) if p + 1 < s.len())
}

/// `^(?=.*\d)[0-9a-fA-F]{8,}$`
fn is_hex_id(s: &[u8]) -> bool {
    s.len() >= 8 && all(s, is_hex) && s.iter().any(|c| c.is_ascii_digit())
}

/// `^(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_-]{16,}$`
fn is_mixed_id(s: &[u8]) -> bool {
    s.len() >= 16
        && all(s, |c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        && s.iter().any(|c| c.is_ascii_digit())
        && s.iter().any(|c| c.is_ascii_alphabetic())
}

/// templating.template_segment
fn template_segment(s: &[u8]) -> &[u8] {
    if s.is_empty() || s[0] == b'{' {
        return s;
    }
    if is_num(s) {
        b"{num}"
    } else if is_uuid(s) {
        b"{uuid}"
    } else if is_email(s) {
        b"{email}"
    } else if is_ipv4(s) || (s.contains(&b':') && is_ipv6(s)) {
        b"{ip}"
    } else if is_hex_id(s) {
        b"{hex}"
    } else if is_mixed_id(s) {
        b"{id}"
    } else {
        s
    }
}

/// templating._template_query
fn template_query(query: &[u8], out: &mut Vec<u8>) {
    for (i, pair) in query.split(|&c| c == b'&').enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        let Some(eq) = pair.iter().position(|&c| c == b'=') else {
            out.extend_from_slice(pair);
            continue;
        };
        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
        if value.is_empty() || value[0] == b'{' || value == b"****" {
            out.extend_from_slice(pair);
            continue;
        }
        let templated = template_segment(value);
        out.extend_from_slice(name);
        out.push(b'=');
        out.extend_from_slice(if templated == value { b"{str}" } else { templated });
    }
}

fn find(s: &[u8], needle: &[u8]) -> Option<usize> {
    s.windows(needle.len()).position(|w| w == needle)
}

/// templating.template_path, for printable ASCII (None otherwise: Python's to do).
pub fn template_path(value: &[u8]) -> Option<Vec<u8>> {
    if !all(value, |c| (0x20..0x7f).contains(&c)) {
        return None;
    }
    let mut out = Vec::with_capacity(value.len() + 8);
    let mut text = value;
    if let Some(scheme_end) = find(text, b"://") {
        let host_end = text[scheme_end + 3..].iter().position(|&c| c == b'/').map_or(text.len(), |p| p + scheme_end + 3);
        out.extend_from_slice(&text[..host_end]);
        text = &text[host_end..];
    }
    if let Some(hash) = text.iter().position(|&c| c == b'#') {
        text = &text[..hash];
    }
    let (path, query) = match text.iter().position(|&c| c == b'?') {
        Some(q) => (&text[..q], Some(&text[q + 1..])),
        None => (text, None),
    };
    for (i, segment) in path.split(|&c| c == b'/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(template_segment(segment));
    }
    if let Some(query) = query {
        out.push(b'?');
        template_query(query, &mut out);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> String {
        String::from_utf8(template_path(s.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn paths() {
        assert_eq!(t("/api/order/123"), "/api/order/{num}");
        assert_eq!(t("/item?id=123&src=feed"), "/item?id={num}&src={str}");
        assert_eq!(t("https://h.example.com/u/a@b.io#frag"), "https://h.example.com/u/{email}");
        assert_eq!(t("/x/10.0.0.1:80/[::1]/deadbeef01"), "/x/{ip}/{ip}/{hex}");
        assert_eq!(template_path("/é".as_bytes()), None);
    }

    #[test]
    fn sensitive() {
        let secrets = vec![b"token".to_vec(), b"sig".to_vec()];
        assert!(maybe_sensitive(b"Authorization: Bearer x", &secrets));
        assert!(maybe_sensitive(b"/a?SIG=1", &secrets));
        assert!(maybe_sensitive(b" {\"a\": 1}", &secrets));
        assert!(maybe_sensitive(b"x-api_key", &secrets));
        assert!(maybe_sensitive(b"4111 1111 1111 1111", &secrets));
        assert!(maybe_sensitive(b"/orders/x4111-1111-1111-1111y", &secrets));
        assert!(!maybe_sensitive(b"/orders/4111111111112", &secrets)); // 13 digits, Luhn fails
        assert!(!maybe_sensitive(b"/api/v1/orders?ref=7", &secrets));
        assert!(!maybe_sensitive(b"GET /orders/{id}", &secrets));
    }
}
