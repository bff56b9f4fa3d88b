//! Test-only fault injection: named points in the code that panic or exit the process when
//! `RECAC_FAILPOINTS` names them (`name=panic` or `name=exit`, comma-separated). Unset in
//! production, where a failpoint costs one lookup in an empty list.

use std::sync::OnceLock;

/// The environment variable that arms failpoints.
pub const ENV: &str = "RECAC_FAILPOINTS";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Effect {
    Panic,
    Exit,
}

fn armed() -> &'static Vec<(String, Effect)> {
    static ARMED: OnceLock<Vec<(String, Effect)>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(ENV)
            .unwrap_or_default()
            .split(',')
            .filter_map(|entry| {
                let (name, effect) = entry.trim().split_once('=')?;
                let effect = match effect {
                    "panic" => Effect::Panic,
                    "exit" => Effect::Exit,
                    _ => return None,
                };
                Some((name.to_string(), effect))
            })
            .collect()
    })
}

/// Fires the failpoint `name` if it is armed.
pub fn hit(name: &str) {
    let Some((_, effect)) = armed().iter().find(|(armed, _)| armed == name) else {
        return;
    };
    match effect {
        Effect::Panic => panic!("failpoint {name} fired"),
        Effect::Exit => {
            eprintln!("failpoint {name} fired: exiting");
            std::process::exit(86);
        }
    }
}
