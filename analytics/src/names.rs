//! Finding a device by what a person types: its id, its name, or the start of either.
//!
//! Operators know devices by name (`lamp-0005`) while the protocol speaks ids. Wherever a
//! device is named, the console, the CLI and the reports take either, in this order of
//! preference: the exact id, the exact name, the name ignoring case, then a prefix of a
//! name and last a prefix of an id (at least [`MIN_ID_PREFIX`] characters). The first rule
//! that matches anything decides; when it matches several devices the answer is
//! [`Resolution::Ambiguous`], never a guess.
//!
//! ```
//! use herd_analytics::names::{resolve, Resolution};
//!
//! let fleet = [("0a1b2c", "lamp-0005"), ("0a1b3d", "lamp-0006"), ("ff0011", "porch")];
//! let devices = || fleet.iter().map(|(id, name)| (*id, *name));
//! assert_eq!(resolve("porch", devices()), Resolution::Found("ff0011".into()));
//! assert_eq!(resolve("lamp-0005", devices()), Resolution::Found("0a1b2c".into()));
//! assert!(matches!(resolve("lamp", devices()), Resolution::Ambiguous(_)));
//! assert_eq!(resolve("ff00", devices()), Resolution::Found("ff0011".into()));
//! assert_eq!(resolve("kitchen", devices()), Resolution::NotFound);
//! ```

/// Shortest id prefix taken for an id: shorter ones match too much by accident.
pub const MIN_ID_PREFIX: usize = 4;

/// Most candidates an ambiguous answer lists.
pub const MAX_CANDIDATES: usize = 8;

/// What a typed device reference came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The id of the one device meant.
    Found(String),
    /// Several devices fit; up to [`MAX_CANDIDATES`] of them as `(id, name)`, sorted.
    Ambiguous(Vec<(String, String)>),
    NotFound,
}

impl Resolution {
    /// The found id, if one device was meant.
    pub fn id(&self) -> Option<&str> {
        match self {
            Resolution::Found(id) => Some(id),
            _ => None,
        }
    }
}

/// Describes the candidates of an ambiguous reference: `lamp-0005 (0a1b2c), porch (ff0011)`.
pub fn describe_candidates(candidates: &[(String, String)]) -> String {
    candidates
        .iter()
        .map(|(id, name)| {
            if name.is_empty() || name == id {
                id.clone()
            } else {
                format!("{name} ({id})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves `query` among `devices`, given as `(id, name)` pairs.
pub fn resolve<'a>(query: &str, devices: impl Iterator<Item = (&'a str, &'a str)>) -> Resolution {
    let query = query.trim();
    if query.is_empty() {
        return Resolution::NotFound;
    }
    let lower = query.to_lowercase();
    // Matches of each rule, in order of preference; the best non-empty rule decides.
    let mut by_rule: [Vec<(String, String)>; 5] = Default::default();
    for (id, name) in devices {
        let rule = if id == query {
            0
        } else if name == query {
            1
        } else if name.to_lowercase() == lower {
            2
        } else if name.to_lowercase().starts_with(&lower) {
            3
        } else if query.chars().count() >= MIN_ID_PREFIX && id.starts_with(query) {
            4
        } else {
            continue;
        };
        by_rule[rule].push((id.to_string(), name.to_string()));
        if rule == 0 {
            // Ids are unique: nothing can beat an exact one.
            break;
        }
    }
    for mut matches in by_rule {
        match matches.len() {
            0 => continue,
            1 => return Resolution::Found(matches.remove(0).0),
            _ => {
                matches.sort();
                matches.truncate(MAX_CANDIDATES);
                return Resolution::Ambiguous(matches);
            }
        }
    }
    Resolution::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Vec<(&'static str, &'static str)> {
        vec![
            ("aaaa0001", "lamp-0001"),
            ("aaaa0002", "lamp-0002"),
            ("bbbb0003", "Porch"),
            ("lamp-0001x", "kitchen"),
            ("cccc0004", "twin"),
            ("cccc0005", "twin"),
        ]
    }

    fn find(query: &str) -> Resolution {
        resolve(query, fleet().into_iter())
    }

    #[test]
    fn preferences() {
        assert_eq!(find("aaaa0001"), Resolution::Found("aaaa0001".into()));
        assert_eq!(find("lamp-0002"), Resolution::Found("aaaa0002".into()));
        assert_eq!(find("porch"), Resolution::Found("bbbb0003".into()));
        assert_eq!(find("kit"), Resolution::Found("lamp-0001x".into()));
        // A name prefix beats an id prefix: "lamp-0001" is a name.
        assert_eq!(find("lamp-0001"), Resolution::Found("aaaa0001".into()));
        assert_eq!(find("bbbb"), Resolution::Found("bbbb0003".into()));
        assert_eq!(
            find("bb"),
            Resolution::NotFound,
            "id prefixes need 4 characters"
        );
        assert_eq!(find("  "), Resolution::NotFound);
        assert_eq!(find("nothing"), Resolution::NotFound);
    }

    #[test]
    fn ambiguity_is_never_a_guess() {
        let Resolution::Ambiguous(candidates) = find("lamp") else {
            panic!("two lamps");
        };
        assert_eq!(
            describe_candidates(&candidates),
            "lamp-0001 (aaaa0001), lamp-0002 (aaaa0002)"
        );
        assert!(matches!(find("twin"), Resolution::Ambiguous(c) if c.len() == 2));
        assert!(matches!(find("aaaa"), Resolution::Ambiguous(_)));
    }
}
