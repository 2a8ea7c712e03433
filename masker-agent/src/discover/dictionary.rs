//! What column names (and comments) say: a dictionary of names and patterns
//! for personal data, in English with common German, French and Spanish
//! forms, matched against the words of an identifier.
//!
//! An identifier is split into words ([`words`]): at `_`, spaces and other
//! punctuation, at lower-to-upper case changes (`firstName`) and between
//! letters and digits (`address2`); letters are lower-cased and folded to
//! ASCII (`prénom` → `prenom`, `Straße` → `strasse`). A dictionary entry is
//! either a run of words (`"date of birth"`, which also matches the single
//! word `dateofbirth`), a word prefix (`"telefon*"`: `telefonnummer`,
//! `telefono`) or a word ending (`"*gehalt"`: `bruttogehalt`). The longest match wins; an entry with no category
//! (`"mac address"`) claims its words for a meaning that is not personal.
//!
//! A match is dropped when another word of the name says the column is
//! *about* the value rather than the value itself ([`MODIFIERS`]:
//! `email_verified`, `phone_model`, `card_type`, `ip_version`).
//! Entries marked [`Strength::NeedsPeople`] (`name`, `address`, `nom`)
//! count only in a table that holds people (see `classify`).

use super::Category;

/// How much a dictionary match says on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strength {
    /// The name is enough (`first_name`, `iban`).
    Strong,
    /// Only in a table of people (`name` of a customer, not of a product).
    NeedsPeople,
}

/// One dictionary entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Words separated by single spaces; a trailing `*` makes the last word
    /// a prefix, a leading `*` makes a single word an ending.
    pub pattern: &'static str,
    /// `None`: the words have a meaning that is not personal data.
    pub category: Option<Category>,
    pub strength: Strength,
}

const fn strong(pattern: &'static str, category: Category) -> Entry {
    Entry { pattern, category: Some(category), strength: Strength::Strong }
}

const fn people(pattern: &'static str, category: Category) -> Entry {
    Entry { pattern, category: Some(category), strength: Strength::NeedsPeople }
}

const fn not_personal(pattern: &'static str) -> Entry {
    Entry { pattern, category: None, strength: Strength::Strong }
}

use Category::*;

/// The dictionary. Order does not matter: the longest match wins, then a
/// strong entry over a weak one.
pub const ENTRIES: &[Entry] = &[
    // ------------------------------------------------------------ email
    strong("email*", Email),
    strong("e mail*", Email),
    strong("mail", Email),
    strong("mail address", Email),
    strong("email address", Email),
    strong("adresse email", Email),
    strong("adresse mail", Email),
    strong("adresse electronique", Email),
    strong("courriel*", Email),
    strong("correo*", Email),
    strong("correo electronico", Email),
    strong("direccion de correo", Email),
    // ------------------------------------------------------------ phone
    strong("phone*", Phone),
    strong("telephone*", Phone),
    strong("tel", Phone),
    strong("tel no", Phone),
    strong("mobile*", Phone),
    strong("cell", Phone),
    strong("cellphone", Phone),
    strong("cell phone", Phone),
    strong("fax", Phone),
    strong("msisdn", Phone),
    strong("telefon*", Phone),
    strong("handy*", Phone),
    strong("mobilfunk*", Phone),
    strong("rufnummer", Phone),
    strong("movil", Phone),
    strong("celular", Phone),
    strong("portable", Phone),
    strong("numero de telephone", Phone),
    strong("numero de telefono", Phone),
    // ------------------------------------------------------------ names
    strong("first name", PersonName),
    strong("last name", PersonName),
    strong("middle name", PersonName),
    strong("maiden name", PersonName),
    strong("full name", PersonName),
    strong("given name*", PersonName),
    strong("family name", PersonName),
    strong("surname*", PersonName),
    strong("forename*", PersonName),
    strong("nickname", PersonName),
    strong("customer name", PersonName),
    strong("contact name", PersonName),
    strong("billing name", PersonName),
    strong("shipping name", PersonName),
    strong("recipient name", PersonName),
    strong("holder name", PersonName),
    strong("cardholder*", PersonName),
    strong("card holder", PersonName),
    strong("account holder", PersonName),
    strong("patient name", PersonName),
    strong("employee name", PersonName),
    strong("person name", PersonName),
    strong("vorname*", PersonName),
    strong("nachname*", PersonName),
    strong("familienname", PersonName),
    strong("geburtsname", PersonName),
    strong("prenom*", PersonName),
    strong("nom de famille", PersonName),
    strong("apellido*", PersonName),
    strong("nombre completo", PersonName),
    strong("nombre y apellidos", PersonName),
    strong("username", PersonName),
    strong("user name", PersonName),
    strong("user login", PersonName),
    strong("login name", PersonName),
    strong("screen name", PersonName),
    strong("nicename", PersonName),
    strong("user nicename", PersonName),
    strong("signed by", PersonName),
    people("given", PersonName),
    people("family", PersonName),
    people("recipient", PersonName),
    people("physician*", PersonName),
    people("doctor", PersonName),
    people("name", PersonName),
    people("display name", PersonName),
    people("nom", PersonName),
    people("nombre", PersonName),
    // ------------------------------------------------------------ national ids
    strong("ssn", NationalId),
    strong("social security*", NationalId),
    strong("social insurance number", NationalId),
    strong("national id*", NationalId),
    strong("national identity*", NationalId),
    strong("national insurance*", NationalId),
    strong("passport*", NationalId),
    strong("id card*", NationalId),
    strong("identity card*", NationalId),
    strong("driver license*", NationalId),
    strong("drivers license*", NationalId),
    strong("driving licence*", NationalId),
    strong("tax id", NationalId),
    strong("tax number", NationalId),
    strong("taxpayer id*", NationalId),
    strong("tin", NationalId),
    strong("sozialversicherung*", NationalId),
    strong("personalausweis*", NationalId),
    strong("reisepass*", NationalId),
    strong("steuer id", NationalId),
    strong("steuernummer", NationalId),
    strong("steueridentifikationsnummer", NationalId),
    strong("steuer identifikationsnummer", NationalId),
    strong("securite sociale", NationalId),
    strong("numero securite sociale", NationalId),
    strong("nir", NationalId),
    strong("passeport*", NationalId),
    strong("carte identite", NationalId),
    strong("dni", NationalId),
    strong("nif", NationalId),
    strong("nie", NationalId),
    strong("pasaporte", NationalId),
    strong("seguridad social", NationalId),
    strong("codice fiscale", NationalId),
    strong("pesel", NationalId),
    strong("bsn", NationalId),
    strong("personnummer", NationalId),
    strong("mrn", NationalId),
    strong("medical record*", NationalId),
    strong("insurance number", NationalId),
    strong("insurance id", NationalId),
    strong("health insurance number", NationalId),
    strong("versichertennummer", NationalId),
    // ------------------------------------------------------------ cards
    strong("card number", Card),
    strong("card no", Card),
    strong("card num", Card),
    strong("cc number", Card),
    strong("cc num", Card),
    strong("ccnum", Card),
    strong("credit card*", Card),
    strong("creditcard*", Card),
    strong("debit card*", Card),
    strong("pan", Card),
    strong("kreditkarte*", Card),
    strong("kartennummer", Card),
    strong("numero de carte", Card),
    strong("carte bancaire", Card),
    strong("numero de tarjeta", Card),
    strong("tarjeta*", Card),
    // ------------------------------------------------------------ bank accounts
    strong("iban", BankAccount),
    strong("bank account*", BankAccount),
    strong("account number", BankAccount),
    strong("kontonummer", BankAccount),
    strong("bankverbindung", BankAccount),
    strong("compte bancaire", BankAccount),
    strong("numero de compte", BankAccount),
    strong("cuenta bancaria", BankAccount),
    strong("numero de cuenta", BankAccount),
    not_personal("bic"),
    not_personal("swift*"),
    not_personal("routing number"),
    not_personal("sort code"),
    // ------------------------------------------------------------ birth dates
    strong("date of birth", BirthDate),
    strong("birth date", BirthDate),
    strong("birthdate", BirthDate),
    strong("birthday", BirthDate),
    strong("dob", BirthDate),
    strong("born on", BirthDate),
    strong("geburtsdatum", BirthDate),
    strong("geburtstag", BirthDate),
    strong("date de naissance", BirthDate),
    strong("date naissance", BirthDate),
    strong("fecha de nacimiento", BirthDate),
    strong("fecha nacimiento", BirthDate),
    strong("nacimiento", BirthDate),
    // ------------------------------------------------------------ IP addresses
    strong("ip", IpAddress),
    strong("ip address*", IpAddress),
    strong("ip addr*", IpAddress),
    strong("ipaddr*", IpAddress),
    strong("ipv4", IpAddress),
    strong("ipv6", IpAddress),
    strong("remote addr*", IpAddress),
    strong("client addr*", IpAddress),
    strong("x forwarded for", IpAddress),
    strong("adresse ip", IpAddress),
    strong("direccion ip", IpAddress),
    // ------------------------------------------------------------ postal addresses
    strong("street*", PostalAddress),
    strong("address line*", PostalAddress),
    strong("addr line*", PostalAddress),
    strong("home address", PostalAddress),
    strong("billing address", PostalAddress),
    strong("shipping address", PostalAddress),
    strong("mailing address", PostalAddress),
    strong("postal address", PostalAddress),
    strong("delivery address", PostalAddress),
    strong("residential address", PostalAddress),
    strong("zip", PostalAddress),
    strong("zip code", PostalAddress),
    strong("zipcode", PostalAddress),
    strong("postcode", PostalAddress),
    strong("postal code", PostalAddress),
    strong("house number", PostalAddress),
    strong("strasse*", PostalAddress),
    strong("hausnummer", PostalAddress),
    strong("plz", PostalAddress),
    strong("anschrift", PostalAddress),
    strong("rue", PostalAddress),
    strong("code postal", PostalAddress),
    strong("calle", PostalAddress),
    strong("codigo postal", PostalAddress),
    strong("domicilio", PostalAddress),
    people("postal", PostalAddress),
    people("address", PostalAddress),
    not_personal("address city"),
    not_personal("address country"),
    not_personal("address state"),
    not_personal("address region"),
    people("adresse", PostalAddress),
    people("direccion", PostalAddress),
    not_personal("mac address*"),
    not_personal("server address"),
    not_personal("host address"),
    not_personal("web address"),
    // ------------------------------------------------------------ locations
    strong("latitude", Geolocation),
    strong("longitude", Geolocation),
    strong("lat", Geolocation),
    strong("lng", Geolocation),
    strong("lon", Geolocation),
    strong("geolocation", Geolocation),
    strong("geo location", Geolocation),
    strong("gps*", Geolocation),
    strong("coordinates", Geolocation),
    // ------------------------------------------------------------ pay
    strong("salary", Compensation),
    strong("salaries", Compensation),
    strong("wage*", Compensation),
    strong("gross pay", Compensation),
    strong("net pay", Compensation),
    strong("pay rate", Compensation),
    strong("bonus", Compensation),
    strong("compensation", Compensation),
    strong("income", Compensation),
    strong("*gehalt", Compensation),
    strong("*lohn", Compensation),
    strong("salaire", Compensation),
    strong("salario", Compensation),
    strong("sueldo", Compensation),
    // ------------------------------------------------------------ not personal
    not_personal("host name"),
    not_personal("hostname"),
    not_personal("file name"),
    not_personal("filename"),
    not_personal("product name"),
    not_personal("company name"),
    not_personal("domain name"),
    not_personal("job name"),
    not_personal("device name"),
    not_personal("table name"),
    not_personal("column name"),
    not_personal("schema name"),
    not_personal("user agent"),
    not_personal("server*"),
    not_personal("nom produit"),
    not_personal("nombre producto"),
];

/// Words that make a name describe a value rather than hold it
/// (`email_verified`, `phone_model`, `card_type`, `ip_version`,
/// `email_sent_at`): a dictionary match next to one of these is dropped.
pub const MODIFIERS: &[&str] = &[
    "verified",
    "verification",
    "confirmed",
    "confirmation",
    "validated",
    "count",
    "counts",
    "cnt",
    "total",
    "flag",
    "enabled",
    "disabled",
    "is",
    "has",
    "can",
    "allow",
    "allowed",
    "opt",
    "optin",
    "optout",
    "opted",
    "consent",
    "subscribed",
    "bounced",
    "bounce",
    "type",
    "types",
    "kind",
    "category",
    "format",
    "status",
    "length",
    "len",
    "sent",
    "received",
    "at",
    "template",
    "templates",
    "domain",
    "provider",
    "model",
    "brand",
    "version",
    "hash",
    "hashed",
    "digest",
    "token",
    "salt",
    "last 4",
    "prefix",
    "suffix",
    "masked",
    "anzahl",
    "nombre de",
];

/// The words of an identifier or a comment: lower case, folded to ASCII,
/// split at punctuation, case changes and letter/digit boundaries.
pub fn words(identifier: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev: Option<char> = None;
    for c in identifier.chars() {
        let folded = fold(c);
        let Some(folded) = folded else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev = None;
            continue;
        };
        if let Some(p) = prev {
            let case_change = p.is_lowercase() && c.is_uppercase();
            let digit_change = p.is_ascii_digit() != c.is_ascii_digit();
            if (case_change || digit_change) && !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        }
        cur.push_str(folded);
        prev = Some(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A letter or digit as lower-case ASCII (`é` → `e`, `ß` → `ss`); `None`
/// for anything else.
fn fold(c: char) -> Option<&'static str> {
    const ASCII: [&str; 36] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l",
        "m", "n", "o", "p", "q", "r", "s", "t", "u", "v", "w", "x", "y", "z",
    ];
    if c.is_ascii_digit() {
        return Some(ASCII[(c as u8 - b'0') as usize]);
    }
    if c.is_ascii_alphabetic() {
        return Some(ASCII[(c.to_ascii_lowercase() as u8 - b'a') as usize + 10]);
    }
    Some(match c.to_lowercase().next().unwrap_or(c) {
        'à' | 'á' | 'â' | 'ã' | 'å' | 'ā' => "a",
        'ä' | 'æ' => "ae",
        'ç' | 'ć' | 'č' => "c",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ę' => "e",
        'ì' | 'í' | 'î' | 'ï' => "i",
        'ñ' | 'ń' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ø' | 'ō' => "o",
        'ö' | 'œ' => "oe",
        'ù' | 'ú' | 'û' | 'ū' => "u",
        'ü' => "ue",
        'ý' | 'ÿ' => "y",
        'ß' => "ss",
        'ł' => "l",
        'ś' | 'š' => "s",
        'ź' | 'ż' | 'ž' => "z",
        _ => return None,
    })
}

/// One dictionary entry found in a list of words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub entry: &'static Entry,
    /// Words `start..end` of the name.
    pub start: usize,
    pub end: usize,
}

impl Match {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// What the dictionary says about a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing in the dictionary.
    Nothing,
    /// An entry matched and no modifier spoils it.
    Found(Match),
    /// An entry matched, but `modifier` says the column describes the value
    /// (`email_verified`).
    Modified { found: Match, modifier: &'static str },
}

/// Looks `words` up: the longest entry wins (then strong over weak, then an
/// entry that is not personal, then an exact word over a prefix: `mail_server`
/// is a server); modifiers outside the match spoil it.
pub fn lookup(words: &[String]) -> Verdict {
    let mut best: Option<Match> = None;
    for entry in ENTRIES {
        for m in find(entry, words) {
            let better = match &best {
                None => true,
                Some(b) => {
                    let key = |m: &Match| {
                        (
                            m.len(),
                            m.entry.strength == Strength::Strong,
                            m.entry.category.is_none(),
                            !m.entry.pattern.ends_with('*'),
                        )
                    };
                    key(&m) > key(b)
                }
            };
            if better {
                best = Some(m);
            }
        }
    }
    let Some(found) = best else { return Verdict::Nothing };
    for (i, w) in words.iter().enumerate() {
        if (found.start..found.end).contains(&i) {
            continue;
        }
        if let Some(modifier) = MODIFIERS.iter().find(|m| !m.contains(' ') && **m == w.as_str()) {
            return Verdict::Modified { found, modifier };
        }
    }
    for m in MODIFIERS.iter().filter(|m| m.contains(' ')) {
        let parts: Vec<&str> = m.split(' ').collect();
        if words.windows(parts.len()).any(|w| w.iter().zip(&parts).all(|(a, b)| a == b)) {
            return Verdict::Modified { found, modifier: m };
        }
    }
    Verdict::Found(found)
}

/// Every place `entry` matches in `words`: as a run of words, or as one
/// word that is the entry's words run together (`firstname`).
fn find(entry: &'static Entry, words: &[String]) -> Vec<Match> {
    if let Some(suffix) = entry.pattern.strip_prefix('*') {
        // A word ending (German compounds: `bruttogehalt`).
        return words
            .iter()
            .enumerate()
            .filter(|(_, w)| w.ends_with(suffix))
            .map(|(i, _)| Match { entry, start: i, end: i + 1 })
            .collect();
    }
    let (pattern, prefix) = match entry.pattern.strip_suffix('*') {
        Some(p) => (p, true),
        None => (entry.pattern, false),
    };
    let parts: Vec<&str> = pattern.split(' ').collect();
    let joined: String = parts.concat();
    let word_is = |w: &str, p: &str, last: bool| if last && prefix { w.starts_with(p) } else { w == p };
    let mut out = Vec::new();
    if parts.len() > 1 {
        for start in 0..words.len().saturating_sub(parts.len() - 1) {
            let ok = parts.iter().enumerate().all(|(k, p)| word_is(&words[start + k], p, k + 1 == parts.len()));
            if ok {
                out.push(Match { entry, start, end: start + parts.len() });
            }
        }
    }
    for (i, w) in words.iter().enumerate() {
        if word_is(w, &joined, true) {
            // A run-together form counts as long as the words it stands for.
            out.push(Match { entry, start: i, end: i + 1 });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn category(name: &str) -> Option<Category> {
        match lookup(&words(name)) {
            Verdict::Found(m) => m.entry.category,
            _ => None,
        }
    }

    #[test]
    fn splits_identifiers_into_words() {
        assert_eq!(words("customerEmail_address2"), ["customer", "email", "address", "2"]);
        assert_eq!(words("Prénom"), ["prenom"]);
        assert_eq!(words("Straße"), ["strasse"]);
        assert_eq!(words("fecha de nacimiento"), ["fecha", "de", "nacimiento"]);
        assert_eq!(words("IPAddress"), ["ipaddress"]);
        assert_eq!(words("número_de_teléfono"), ["numero", "de", "telefono"]);
    }

    #[test]
    fn finds_personal_columns_in_four_languages() {
        for (name, want) in [
            ("email", Email),
            ("e_mail_adresse", Email),
            ("courriel", Email),
            ("correo_electronico", Email),
            ("work_phone", Phone),
            ("Telefonnummer", Phone),
            ("téléphone", Phone),
            ("handynummer", Phone),
            ("firstName", PersonName),
            ("Nachname", PersonName),
            ("prénom", PersonName),
            ("apellidos", PersonName),
            ("ssn", NationalId),
            ("passport_number", NationalId),
            ("numero_securite_sociale", NationalId),
            ("card_number", Card),
            ("numero_de_tarjeta", Card),
            ("bank_iban", BankAccount),
            ("date_of_birth", BirthDate),
            ("Geburtsdatum", BirthDate),
            ("fecha_de_nacimiento", BirthDate),
            ("last_login_ip", IpAddress),
            ("street_address", PostalAddress),
            ("address_line1", PostalAddress),
            ("PLZ", PostalAddress),
            ("code_postal", PostalAddress),
            ("lat", Geolocation),
            ("gross_pay", Compensation),
            ("bruttogehalt", Compensation),
            ("user_login", PersonName),
            ("mrn", NationalId),
        ] {
            assert_eq!(category(name), Some(want), "{name}");
        }
    }

    #[test]
    fn names_about_a_value_are_not_the_value() {
        for name in [
            "email_verified",
            "email_sent_at",
            "phone_model",
            "card_type",
            "card_last4",
            "ip_version",
            "mac_address",
            "hostname",
            "user_agent",
            "nombre_de_commandes",
            "order_number",
            "created_at",
            "address_city",
            "last_login",
        ] {
            assert_eq!(category(name), None, "{name}");
        }
    }

    #[test]
    fn weak_entries_are_marked() {
        let Verdict::Found(m) = lookup(&words("name")) else { panic!() };
        assert_eq!(m.entry.strength, Strength::NeedsPeople);
        let Verdict::Found(m) = lookup(&words("billing_name")) else { panic!() };
        assert_eq!(m.entry.strength, Strength::Strong);
        assert!(ENTRIES.len() >= 60);
    }
}
