//! Property checking on writes: invalid values are replaced by defaults with a warning, or refused
//! under `error_mode: "strict"`; read-only properties are ignored with a warning.

use serde_json::{Map, Value, json};

use super::catalogue::{Schema, fixed_properties};

/// Per-property messages, `{name: [message]}`.
pub(crate) type Messages = Map<String, Value>;

/// Properties after checking, with the warnings to report.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    pub(crate) properties: Map<String, Value>,
    pub(crate) warnings: Messages,
}

/// Properties for a new product of `blueprint_id`: defaults overridden by `supplied`.
pub(crate) fn for_create(
    blueprint_id: i64,
    supplied: Option<&Map<String, Value>>,
    strict: bool,
) -> Result<Checked, Messages> {
    let schema = Schema::of(blueprint_id);
    let mut checked = Checked {
        properties: schema.defaults(),
        warnings: Map::new(),
    };
    apply(&schema, blueprint_id, &mut checked, supplied, strict, false)?;
    Ok(checked)
}

/// Properties of an existing product after an update with `supplied`; foil is read-only then.
pub(crate) fn for_update(
    blueprint_id: i64,
    current: &Map<String, Value>,
    supplied: Option<&Map<String, Value>>,
    strict: bool,
) -> Result<Checked, Messages> {
    let schema = Schema::of(blueprint_id);
    let mut checked = Checked {
        properties: current.clone(),
        warnings: Map::new(),
    };
    apply(&schema, blueprint_id, &mut checked, supplied, strict, true)?;
    Ok(checked)
}

fn apply(
    schema: &Schema,
    blueprint_id: i64,
    checked: &mut Checked,
    supplied: Option<&Map<String, Value>>,
    strict: bool,
    updating: bool,
) -> Result<(), Messages> {
    let mut errors = Map::new();
    let fixed = fixed_properties(blueprint_id);
    for (name, raw) in supplied.into_iter().flatten() {
        let value = coerce(raw);
        let read_only = fixed.contains_key(name) || (updating && *name == schema.foil_key());
        if read_only {
            if checked.properties.get(name) != Some(&value) && fixed.get(name) != Some(&value) {
                note(
                    &mut checked.warnings,
                    name,
                    format!("Read only property {name} has been ignored"),
                );
            }
            continue;
        }
        match schema.allows(name, &value) {
            Some(true) => {
                checked.properties.insert(name.clone(), value);
            }
            Some(false) if strict => note(
                &mut errors,
                name,
                format!("{value} is not a valid value for {name}"),
            ),
            Some(false) => {
                let kept = checked.properties.get(name).cloned().unwrap_or(Value::Null);
                note(
                    &mut checked.warnings,
                    name,
                    format!("Invalid value {value} for {name} replaced by {kept}"),
                );
            }
            None if strict => note(&mut errors, name, format!("{name} is not a valid property")),
            None => note(
                &mut checked.warnings,
                name,
                format!("Unknown property {name} has been ignored"),
            ),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Booleans sometimes arrive as strings (`"true"`), the way the API itself writes defaults.
fn coerce(value: &Value) -> Value {
    match value.as_str() {
        Some("true") => json!(true),
        Some("false") => json!(false),
        _ => value.clone(),
    }
}

fn note(messages: &mut Messages, name: &str, message: String) {
    if let Some(Value::Array(list)) = messages.get_mut(name) {
        list.push(json!(message));
    } else {
        messages.insert(name.to_owned(), json!([message]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn create_fills_defaults_and_fixes_invalid_values_with_a_warning() {
        let checked = for_create(
            1,
            Some(&map(json!({"condition": "Destroyed", "mtg_foil": "true"}))),
            false,
        )
        .unwrap();
        assert_eq!(checked.properties["condition"], "Near Mint");
        assert_eq!(checked.properties["mtg_foil"], true);
        assert!(checked.warnings.contains_key("condition"));
    }

    #[test]
    fn strict_mode_refuses_invalid_values() {
        let errors =
            for_create(1, Some(&map(json!({"condition": "Destroyed"}))), true).unwrap_err();
        assert!(errors.contains_key("condition"));
    }

    #[test]
    fn foil_is_read_only_on_update() {
        let current = for_create(1, None, false).unwrap().properties;
        let checked = for_update(
            1,
            &current,
            Some(&map(json!({"mtg_foil": true, "condition": "Played"}))),
            false,
        )
        .unwrap();
        assert_eq!(checked.properties["mtg_foil"], false);
        assert_eq!(checked.properties["condition"], "Played");
        assert_eq!(
            checked.warnings["mtg_foil"][0],
            "Read only property mtg_foil has been ignored"
        );
    }
}
