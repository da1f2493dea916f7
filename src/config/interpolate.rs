//! `${NAME}` and `${NAME:-default}` in `release.yaml`, replaced before it is parsed.

use super::*;

/// Replace `${NAME}` and `${NAME:-default}` from `env`; `$$` is a literal `$`. An unset variable
/// without a default is an error naming it and its line.
pub fn interpolate(
    text: &str,
    file: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    interpolate_with(text, file, env, None)
}

/// [`interpolate`]; `unset`: what an unset variable without a default becomes, instead of an error.
pub(super) fn interpolate_with(
    text: &str,
    file: &str,
    env: impl Fn(&str) -> Option<String>,
    unset: Option<&str>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        // A comment line is copied as it is: `${X}` there documents, it does not require X.
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body.find('}').ok_or_else(|| ConfigError {
                    file: file.into(),
                    field: "${...}".into(),
                    line: Some(n + 1),
                    message: "an unclosed ${ in the file".into(),
                })?;
                let expr = &body[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (expr, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(ConfigError {
                        file: file.into(),
                        field: format!("${{{expr}}}"),
                        line: Some(n + 1),
                        message: "not a variable name".into(),
                    });
                }
                match env(name)
                    .filter(|v| !v.is_empty())
                    .or(default.map(str::to_string))
                    .or(unset.map(str::to_string))
                {
                    Some(v) => out.push_str(&v),
                    None => {
                        return Err(ConfigError {
                            file: file.into(),
                            field: format!("${{{name}}}"),
                            line: Some(n + 1),
                            message: format!(
                                "the environment variable {name} is not set (set it, or write ${{{name}:-default}})"
                            ),
                        });
                    }
                }
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}
