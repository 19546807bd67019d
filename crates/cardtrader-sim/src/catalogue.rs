//! The deterministic reference catalogue (games, categories, expansions, blueprints), derived from ids
//! so nothing is stored and every run, test and fixture sees the same data.

use serde_json::{Map, Value, json};

use super::hash::mix;

/// Blueprint ids `1..=CATALOGUE_BLUEPRINTS` are the ones the shop's catalogue fixture maps.
pub const CATALOGUE_BLUEPRINTS: i64 = 300_000;
/// Blueprints CardTrader knows but the shop does not (ids just above the mapped range).
pub(crate) const UNMAPPED_BLUEPRINTS: i64 = 10_000;
/// Highest blueprint id the simulated CardTrader knows.
pub const MAX_BLUEPRINT: i64 = CATALOGUE_BLUEPRINTS + UNMAPPED_BLUEPRINTS;
/// Blueprints per expansion, fixed so ids map to expansions by arithmetic.
const PER_EXPANSION: i64 = 100;
/// Highest expansion id (3,000 mapped + 100 unmapped).
pub(crate) const MAX_EXPANSION: i64 = MAX_BLUEPRINT / PER_EXPANSION;

/// The expansion a blueprint belongs to: `(blueprint_id - 1) / 100 + 1`.
pub fn blueprint_expansion(blueprint_id: i64) -> i64 {
    (blueprint_id - 1) / PER_EXPANSION + 1
}

/// A game, with the prefix its property names carry (`mtg_language`, `pokemon_foil`, …).
#[derive(Debug)]
pub(crate) struct Game {
    pub(crate) id: i64,
    name: &'static str,
    display_name: &'static str,
    pub(crate) prefix: &'static str,
    pub(crate) single_category: i64,
}

const GAMES: [Game; 5] = [
    Game {
        id: 1,
        name: "Magic",
        display_name: "Magic: the Gathering",
        prefix: "mtg",
        single_category: 1,
    },
    Game {
        id: 4,
        name: "YuGiOh",
        display_name: "Yu-Gi-Oh!",
        prefix: "yugioh",
        single_category: 5,
    },
    Game {
        id: 5,
        name: "Pokemon",
        display_name: "Pokémon",
        prefix: "pokemon",
        single_category: 73,
    },
    Game {
        id: 6,
        name: "FleshAndBlood",
        display_name: "Flesh and Blood",
        prefix: "fab",
        single_category: 80,
    },
    Game {
        id: 8,
        name: "Digimon",
        display_name: "Digimon",
        prefix: "digimon",
        single_category: 200,
    },
];

const CONDITIONS: [&str; 6] = [
    "Mint",
    "Near Mint",
    "Slightly Played",
    "Moderately Played",
    "Played",
    "Poor",
];
const LANGUAGES: [&str; 6] = ["en", "it", "de", "fr", "es", "jp"];
const SEALED_KINDS: [&str; 5] = ["Booster Box", "Booster", "Sealed Deck", "Accessory", "Lot"];
const WORDS_A: [&str; 16] = [
    "Thassa's", "Llanowar", "Serra", "Goblin", "Dark", "Ancient", "Shivan", "Ethereal", "Savage",
    "Arcane", "Vampiric", "Sol", "Mox", "Crystal", "Storm", "Elvish",
];
const WORDS_B: [&str; 16] = [
    "Oracle", "Elves", "Angel", "Guide", "Ritual", "Tomb", "Dragon", "Familiar", "Lands", "Signet",
    "Tutor", "Ring", "Pearl", "Vein", "Crow", "Mystic",
];

/// The game an expansion belongs to: mostly Magic, every tenth expansion another game.
pub(crate) fn expansion_game(expansion_id: i64) -> &'static Game {
    match expansion_id % 10 {
        0 => &GAMES[1 + ((expansion_id / 10) % 4) as usize],
        _ => &GAMES[0],
    }
}

/// The game a blueprint belongs to.
pub(crate) fn blueprint_game(blueprint_id: i64) -> &'static Game {
    expansion_game(blueprint_expansion(blueprint_id))
}

/// Whether CardTrader knows this blueprint.
pub(crate) fn blueprint_exists(blueprint_id: i64) -> bool {
    (1..=MAX_BLUEPRINT).contains(&blueprint_id)
}

/// `GET /games`, already wrapped the way the live API answers.
pub(crate) fn games_json() -> Value {
    let games: Vec<Value> = GAMES
        .iter()
        .map(|g| json!({"id": g.id, "name": g.name, "display_name": g.display_name}))
        .collect();
    json!({ "array": games })
}

/// `GET /categories`: one single-card category per game (with properties) and sealed ones.
pub(crate) fn categories_json(game_id: Option<i64>) -> Value {
    let mut out = Vec::new();
    for (g_index, game) in GAMES.iter().enumerate() {
        if game_id.is_some_and(|id| id != game.id) {
            continue;
        }
        let props = schema_properties(&Schema::full(game.prefix), false);
        out.push(
            json!({"id": game.single_category, "name": format!("{} Single Card", game.name),
            "game_id": game.id, "properties": props}),
        );
        for (k_index, kind) in SEALED_KINDS.iter().enumerate() {
            let id = 1000 + (g_index * 10 + k_index) as i64;
            out.push(json!({"id": id, "name": format!("{} {kind}", game.name),
                "game_id": game.id, "properties": []}));
        }
    }
    Value::Array(out)
}

/// One expansion: `{id, game_id, code, name}`.
pub(crate) fn expansion_json(id: i64) -> Value {
    json!({"id": id, "game_id": expansion_game(id).id, "code": expansion_code(id),
        "name": expansion_name(id)})
}

/// A 3-letter lower-case set code, unique per expansion id.
pub(crate) fn expansion_code(id: i64) -> String {
    let mut n = id;
    let mut code = [b'a'; 3];
    for slot in code.iter_mut().rev() {
        *slot = b'a' + (n % 26) as u8;
        n /= 26;
    }
    String::from_utf8_lossy(&code).into_owned()
}

/// The expansion's English name.
pub(crate) fn expansion_name(id: i64) -> String {
    format!("Simulated Set {id}")
}

/// The blueprint's English card name.
pub(crate) fn blueprint_name(blueprint_id: i64) -> String {
    let h = mix(blueprint_id as u64, 0xb1);
    format!(
        "{} {}",
        WORDS_A[(h % 16) as usize],
        WORDS_B[((h >> 8) % 16) as usize]
    )
}

/// The editable properties a blueprint offers and their possible values.
#[derive(Debug, Clone)]
pub(crate) struct Schema {
    pub(crate) prefix: &'static str,
    pub(crate) conditions: &'static [&'static str],
    pub(crate) languages: &'static [&'static str],
}

impl Schema {
    fn full(prefix: &'static str) -> Self {
        Self {
            prefix,
            conditions: &CONDITIONS,
            languages: &LANGUAGES,
        }
    }

    /// The schema of one blueprint: some lack `Mint`, some only come in `en`/`jp`, as observed.
    pub(crate) fn of(blueprint_id: i64) -> Self {
        let prefix = blueprint_game(blueprint_id).prefix;
        let conditions: &'static [&'static str] = if blueprint_id % 5 == 0 {
            &CONDITIONS[1..]
        } else {
            &CONDITIONS
        };
        let languages: &'static [&'static str] = if blueprint_id % 7 == 0 {
            &["en", "jp"]
        } else {
            &LANGUAGES
        };
        Self {
            prefix,
            conditions,
            languages,
        }
    }

    /// Name of the language property (`mtg_language`, …).
    pub(crate) fn language_key(&self) -> String {
        format!("{}_language", self.prefix)
    }

    /// Name of the foil property, read-only once a product exists.
    pub(crate) fn foil_key(&self) -> String {
        format!("{}_foil", self.prefix)
    }

    /// Distinct (condition, language, foil) combinations.
    pub(crate) fn variants(&self) -> u64 {
        (self.conditions.len() * self.languages.len() * 2) as u64
    }

    /// The properties of variant `v`; variant 0 is Near Mint, English, non-foil.
    pub(crate) fn variant(&self, v: u64) -> Map<String, Value> {
        let langs = self.languages.len() as u64;
        let conds = self.conditions.len() as u64;
        let near_mint = self
            .conditions
            .iter()
            .position(|c| *c == "Near Mint")
            .unwrap_or(0) as u64;
        let cond = self.conditions[((v / 2 / langs + near_mint) % conds) as usize];
        let lang = self.languages[((v / 2) % langs) as usize];
        let mut props = Map::new();
        props.insert("condition".into(), json!(cond));
        props.insert(self.language_key(), json!(lang));
        props.insert(self.foil_key(), json!(v % 2 == 1));
        props.insert("signed".into(), json!(false));
        props.insert("altered".into(), json!(false));
        props
    }

    /// Defaults for every editable property.
    pub(crate) fn defaults(&self) -> Map<String, Value> {
        self.variant(0)
    }

    /// Whether `value` is allowed for editable property `name`; `None` when `name` is not editable.
    pub(crate) fn allows(&self, name: &str, value: &Value) -> Option<bool> {
        if name == "condition" {
            return Some(value.as_str().is_some_and(|v| self.conditions.contains(&v)));
        }
        if name == self.language_key() {
            return Some(value.as_str().is_some_and(|v| self.languages.contains(&v)));
        }
        if name == self.foil_key() || name == "signed" || name == "altered" {
            return Some(value.is_boolean());
        }
        None
    }
}

fn schema_properties(schema: &Schema, with_defaults: bool) -> Value {
    let mut props = vec![
        json!({"name": "condition", "type": "string", "possible_values": schema.conditions}),
        json!({"name": schema.language_key(), "type": "string", "possible_values": schema.languages}),
        json!({"name": schema.foil_key(), "type": "boolean", "possible_values": [true, false]}),
        json!({"name": "signed", "type": "boolean", "possible_values": [true, false]}),
        json!({"name": "altered", "type": "boolean", "possible_values": [true, false]}),
    ];
    if with_defaults {
        let defaults = schema.defaults();
        for prop in &mut props {
            let name = prop["name"].as_str().unwrap_or_default().to_owned();
            // The API sends every default as a string, booleans included ("false").
            let default = match defaults.get(&name) {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            prop["default_value"] = json!(default);
        }
    }
    Value::Array(props)
}

/// Properties fixed by the card itself (rarity, collector number, …), merged into marketplace rows.
pub(crate) fn fixed_properties(blueprint_id: i64) -> Map<String, Value> {
    let game = blueprint_game(blueprint_id);
    let h = mix(blueprint_id as u64, 0xf1);
    let rarity = ["Common", "Uncommon", "Rare", "Mythic"][(h % 4) as usize];
    let mut fixed = Map::new();
    fixed.insert(format!("{}_rarity", game.prefix), json!(rarity));
    fixed.insert(
        "collector_number".into(),
        json!(((blueprint_id - 1) % PER_EXPANSION + 1).to_string()),
    );
    if game.id == 1 {
        fixed.insert("cmc".into(), json!(((h >> 4) % 8).to_string()));
        let colour = ["W", "U", "B", "R", "G"][((h >> 8) % 5) as usize];
        fixed.insert("mtg_card_colors".into(), json!(colour));
        fixed.insert("tournament_legal".into(), json!(true));
    }
    fixed
}

/// One blueprint in the `/blueprints/export` shape.
pub(crate) fn blueprint_json(id: i64) -> Value {
    let game = blueprint_game(id);
    let h = mix(id as u64, 0xb2);
    let image = format!("/uploads/blueprints/image/{id}/card.jpg");
    json!({
        "id": id, "name": blueprint_name(id), "version": Value::Null, "game_id": game.id,
        "category_id": game.single_category, "expansion_id": blueprint_expansion(id),
        "image_url": format!("https://www.cardtrader.com{image}"),
        "editable_properties": schema_properties(&Schema::of(id), true),
        "fixed_properties": fixed_properties(id),
        "scryfall_id": if game.id == 1 { json!(uuid_like(h)) } else { Value::Null },
        "card_market_ids": [100_000 + id],
        "tcg_player_id": if h.is_multiple_of(3) { Value::Null } else { json!(200_000 + id) },
        "image": {"url": image, "show": {"url": image}, "preview": {"url": image}, "social": {"url": image}},
        "back_image": Value::Null,
    })
}

fn uuid_like(h: u64) -> String {
    let b = mix(h, 7);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blueprints_map_to_expansions_by_hundreds() {
        assert_eq!(blueprint_expansion(1), 1);
        assert_eq!(blueprint_expansion(100), 1);
        assert_eq!(blueprint_expansion(101), 2);
        assert_eq!(blueprint_expansion(CATALOGUE_BLUEPRINTS), 3_000);
        assert_eq!(MAX_EXPANSION, 3_100);
    }

    #[test]
    fn expansion_codes_are_unique_and_short() {
        let codes: std::collections::HashSet<_> = (1..=MAX_EXPANSION).map(expansion_code).collect();
        assert_eq!(codes.len() as i64, MAX_EXPANSION);
    }

    #[test]
    fn variants_are_distinct_and_valid() {
        let schema = Schema::of(35); // both restrictions apply: no Mint, en/jp only
        let all: Vec<_> = (0..schema.variants()).map(|v| schema.variant(v)).collect();
        for (i, props) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|other| other != props));
            assert!(props.iter().all(|(k, v)| schema.allows(k, v) == Some(true)));
        }
        assert_eq!(all[0]["condition"], "Near Mint");
    }

    #[test]
    fn default_values_are_strings() {
        let bp = blueprint_json(42);
        for prop in bp["editable_properties"].as_array().unwrap() {
            assert!(prop["default_value"].is_string());
        }
    }
}
