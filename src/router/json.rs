//! JSON output in exactly the format of Python's `json.dumps` with default arguments:
//! `", "` between items, `": "` after keys, everything outside printable ASCII
//! escaped as `\uXXXX` (astral characters as surrogate pairs), floats as Python's
//! `repr` prints them. Numbers keep their original text where Python would too
//! (integers of any size), which is why `serde_json` runs with `arbitrary_precision`.

use serde_json::Value;

/// Appends `v` to `out`.
pub fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n.as_str()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, k);
                out.push_str(": ");
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

/// Appends a JSON string literal.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

fn write_number(out: &mut String, text: &str) {
    if text.contains(['.', 'e', 'E']) {
        let x: f64 = text.parse().expect("serde_json validated the number");
        write_float(out, x);
    } else if text == "-0" {
        out.push('0');
    } else {
        out.push_str(text);
    }
}

/// Appends `x` as Python's `repr(float)` writes it.
pub fn write_float(out: &mut String, x: f64) {
    if x.is_infinite() {
        out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    if x.is_nan() {
        out.push_str("NaN");
        return;
    }
    if x == 0.0 {
        out.push_str(if x.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    // Shortest round-trip digits and the decimal exponent.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if x < 0.0 {
        out.push('-');
    }
    let decpt = exp + 1;
    if -4 < decpt && decpt <= 16 {
        let n = digits.len() as i32;
        if decpt <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-decpt) as usize));
            out.push_str(&digits);
        } else if decpt >= n {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (decpt - n) as usize));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.abs()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let v: Value = serde_json::from_str(input).unwrap();
        let mut out = String::new();
        write_value(&mut out, &v);
        assert_eq!(out, expected, "for input {input}");
    }

    // Expected strings are what CPython 3.11 prints for json.dumps(json.loads(input)).
    #[test]
    fn matches_python_json_dumps() {
        check(
            r#"{"a":1,"b":[true,false,null],"c":{}}"#,
            r#"{"a": 1, "b": [true, false, null], "c": {}}"#,
        );
        check(r#"{"z":1,"a":2}"#, r#"{"z": 1, "a": 2}"#);
        check(r#"[]"#, "[]");
        check(r#""é☃😀""#, r#""\u00e9\u2603\ud83d\ude00""#);
        check(
            r#""\u0000\u001f\u007f~ \"\\/\b\f\n\r\t""#,
            r#""\u0000\u001f\u007f~ \"\\/\b\f\n\r\t""#,
        );
        check(
            "123456789012345678901234567890",
            "123456789012345678901234567890",
        );
        check("-0", "0");
        check("-5", "-5");
    }

    #[test]
    fn floats_print_like_python_repr() {
        for (input, expected) in [
            ("1.0", "1.0"),
            ("1.5", "1.5"),
            ("-0.0", "-0.0"),
            ("0.1", "0.1"),
            ("100.0", "100.0"),
            ("1e2", "100.0"),
            ("1e15", "1000000000000000.0"),
            ("1e16", "1e+16"),
            ("1.5e16", "1.5e+16"),
            ("123456789.125", "123456789.125"),
            ("0.0001", "0.0001"),
            ("0.00001", "1e-05"),
            ("1.25e-7", "1.25e-07"),
            ("1e100", "1e+100"),
            ("2.5E-300", "2.5e-300"),
            ("1e400", "Infinity"),
            ("-1e400", "-Infinity"),
            ("3.141592653589793", "3.141592653589793"),
        ] {
            check(input, expected);
        }
    }
}
