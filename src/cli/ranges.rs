//! Value parsers that give every numeric flag its range, so a bad value (`--clip -1`,
//! `--weight-decay nan`, `--steps 0`) is refused by clap with the flag named, before anything
//! runs. Values from `--config` files go through the same parsers.

/// A whole number of at least 1.
pub fn at_least_one(text: &str) -> Result<usize, String> {
    let n: usize = text.trim().parse().map_err(|_| format!("`{text}` is not a whole number"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// A token length of at least 2 (one token predicts the next).
pub fn token_length(text: &str) -> Result<usize, String> {
    let n: usize = text.trim().parse().map_err(|_| format!("`{text}` is not a whole number"))?;
    if n < 2 {
        return Err("must be at least 2 (one token predicts the next)".into());
    }
    Ok(n)
}

fn number(text: &str) -> Result<f64, String> {
    let x: f64 = text.trim().parse().map_err(|_| format!("`{text}` is not a number"))?;
    if !x.is_finite() {
        return Err("must be a finite number".into());
    }
    Ok(x)
}

/// A finite number above 0.
pub fn positive(text: &str) -> Result<f64, String> {
    let x = number(text)?;
    if x <= 0.0 {
        return Err("must be above 0".into());
    }
    Ok(x)
}

/// A finite number of at least 0.
pub fn non_negative(text: &str) -> Result<f64, String> {
    let x = number(text)?;
    if x < 0.0 {
        return Err("must be at least 0".into());
    }
    Ok(x)
}

/// [`non_negative`], as f32.
pub fn non_negative_f32(text: &str) -> Result<f32, String> {
    let x = non_negative(text)?;
    if x > f32::MAX as f64 {
        return Err("is too large".into());
    }
    Ok(x as f32)
}

/// A fraction in [0, 1].
pub fn fraction(text: &str) -> Result<f64, String> {
    let x = number(text)?;
    if !(0.0..=1.0).contains(&x) {
        return Err("must be in [0, 1]".into());
    }
    Ok(x)
}

/// A probability of dropping, in [0, 1).
pub fn dropout(text: &str) -> Result<f64, String> {
    let x = number(text)?;
    if !(0.0..1.0).contains(&x) {
        return Err("must be in [0, 1)".into());
    }
    Ok(x)
}

/// A probability mass in (0, 1].
pub fn mass(text: &str) -> Result<f64, String> {
    let x = number(text)?;
    if !(x > 0.0 && x <= 1.0) {
        return Err("must be in (0, 1]".into());
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parser_refuses_its_edges_and_nan() {
        assert_eq!(at_least_one("3"), Ok(3));
        assert!(at_least_one("0").is_err() && at_least_one("-1").is_err() && at_least_one("x").is_err());
        assert!(token_length("1").is_err() && token_length("2").is_ok());
        for parser in [positive, non_negative, fraction, dropout, mass] {
            assert!(parser("nan").is_err() && parser("inf").is_err() && parser("-2").is_err() && parser("x").is_err());
        }
        assert!(positive("0").is_err() && positive("1e-3").is_ok());
        assert!(non_negative("0").is_ok());
        assert!(fraction("1").is_ok() && fraction("1.5").is_err());
        assert!(dropout("0").is_ok() && dropout("1").is_err());
        assert!(mass("0").is_err() && mass("1").is_ok());
        assert!(non_negative_f32("1e300").is_err());
    }
}
