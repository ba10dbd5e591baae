//! The sidecar JSON of the scan drop contract, v1 (`riac.scan/1`): parsed leniently into a
//! raw form (so a missing field is reported by name, not as a serde type error), then checked
//! into [`ScanMeta`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{is_valid_scan_id, ContainerId};

pub const SCAN_SCHEMA: &str = "riac.scan/1";

/// Bounds on the sidecar's free text and lists (documented in the README's scan drop
/// contract). Every one is rendered in the UI or sent on in verdicts and entry packages, so
/// none may be unbounded; real values are far smaller.
pub const MAX_CONTAINER_IDS: usize = 16;
/// A container id as written (spaces and dashes included) before it is normalised.
pub const MAX_CONTAINER_ID_CHARS: usize = 32;
pub const MAX_PLATE_CHARS: usize = 32;
pub const MAX_GOODS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 256;
/// A field value longer than this is not echoed whole in an error message.
const SHOWN_CHARS: usize = 48;

/// A value for an error message: quoted, control characters escaped, and cut to
/// [`SHOWN_CHARS`] (a 900 KB field must not make a 900 KB rejection line).
fn shown(s: &str) -> String {
    let n = s.chars().count();
    if n <= SHOWN_CHARS {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(SHOWN_CHARS).collect();
        format!("{head:?}... ({n} characters)")
    }
}

/// Free text (a plate, a goods description): at most `max` characters, no control
/// characters (no NUL, ESC, CR or LF: they forge lines in logs and corrupt terminals).
fn text(s: &str, field: &str, max: usize) -> Result<(), SidecarError> {
    let n = s.chars().count();
    if n > max {
        return Err(SidecarError::field(
            field,
            format!("is {n} characters long; at most {max} are allowed"),
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(SidecarError::field(
            field,
            format!(
                "contains the control character {:?}; only printable text is allowed",
                c
            ),
        ));
    }
    Ok(())
}

/// Why a sidecar was refused. `field` is the JSON path a scanner integrator must fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SidecarError {
    #[error("sidecar is not valid JSON: {0}")]
    Json(String),
    #[error("field `{field}`: {message}")]
    Field { field: String, message: String },
}

impl SidecarError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Field {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The JSON path at fault, for API error bodies (`None` for a syntax error).
    pub fn field_name(&self) -> Option<&str> {
        match self {
            Self::Json(_) => None,
            Self::Field { field, .. } => Some(field),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Entry,
    Exit,
    Import,
    Export,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Regime {
    Transit,
    Import,
    Export,
}

/// What a pixel value means once the file's own photometric interpretation (DICOM
/// MONOCHROME1, TIFF WhiteIsZero) has been applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelMeaning {
    /// Detected intensity: air is bright, dense goods are dark.
    Transmission,
    /// Attenuation: air is dark, dense goods are bright.
    Attenuation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CabSide {
    Left,
    Right,
}

macro_rules! str_enum {
    ($t:ty { $($v:ident = $s:literal),* }) => {
        impl $t {
            pub const ALLOWED: &'static str = concat!($($s, " "),*);
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)* _ => None }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
str_enum!(Direction { Entry = "entry", Exit = "exit", Import = "import", Export = "export" });
str_enum!(Regime { Transit = "transit", Import = "import", Export = "export" });
str_enum!(PixelMeaning { Transmission = "transmission", Attenuation = "attenuation" });
str_enum!(CabSide { Left = "left", Right = "right" });

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goods {
    pub hs_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gross_kg: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Declaration {
    pub number: String,
    pub regime: Regime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_site: Option<String>,
    pub goods: Vec<Goods>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRef {
    pub file: String,
    pub pixel_meaning: PixelMeaning,
    /// [horizontal, vertical] size of one pixel at the object, in millimetres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_mm: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cab_side: Option<CabSide>,
}

/// A validated sidecar. `raw` keeps the scanner's JSON as received (vendor fields included).
#[derive(Debug, Clone, PartialEq)]
pub struct ScanMeta {
    pub scan_id: String,
    pub scanner_id: String,
    pub site_id: String,
    pub scanned_at: OffsetDateTime,
    pub direction: Direction,
    pub container_ids: Vec<ContainerId>,
    pub vehicle_plate: Option<String>,
    pub declaration: Declaration,
    pub image: ImageRef,
    pub raw: serde_json::Value,
}

/// Bounds on a sidecar's timestamps, from the `[ingest]` config.
#[derive(Debug, Clone, Copy)]
pub struct ValidationLimits {
    /// How far `scanned_at` may be ahead of this node's clock (scanner clocks drift).
    pub max_future: Duration,
    /// How old a scan may be when it arrives (a drop held for months is an error).
    pub max_age: Duration,
}

impl Default for ValidationLimits {
    fn default() -> Self {
        Self {
            max_future: Duration::from_secs(600),
            max_age: Duration::from_secs(90 * 86400),
        }
    }
}

// The raw forms accept anything JSON can hold for each field so that a wrong type is
// reported by our code with the field's name and the allowed values.
#[derive(Deserialize)]
struct RawSidecar {
    schema: Option<String>,
    scan_id: Option<String>,
    scanner_id: Option<String>,
    site_id: Option<String>,
    scanned_at: Option<String>,
    direction: Option<String>,
    container_ids: Option<Vec<String>>,
    vehicle_plate: Option<String>,
    declaration: Option<RawDeclaration>,
    image: Option<RawImage>,
}

#[derive(Deserialize)]
struct RawDeclaration {
    number: Option<String>,
    regime: Option<String>,
    exit_site: Option<String>,
    goods: Option<Vec<RawGoods>>,
}

#[derive(Deserialize)]
struct RawGoods {
    hs_code: Option<String>,
    description: Option<String>,
    packages: Option<u32>,
    gross_kg: Option<f64>,
}

#[derive(Deserialize)]
struct RawImage {
    file: Option<String>,
    pixel_meaning: Option<String>,
    pixel_mm: Option<Vec<f64>>,
    cab_side: Option<String>,
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, SidecarError> {
    v.ok_or_else(|| SidecarError::field(field, "is required but missing"))
}

fn identifier(v: Option<String>, field: &str) -> Result<String, SidecarError> {
    let s = required(v, field)?;
    let t = s.trim();
    if t.is_empty() || t.len() > 64 || t.chars().any(char::is_control) {
        return Err(SidecarError::field(
            field,
            format!("{} must be 1-64 printable characters", shown(&s)),
        ));
    }
    Ok(t.to_string())
}

fn enum_field<T>(
    v: Option<String>,
    field: &str,
    parse: fn(&str) -> Option<T>,
    allowed: &str,
) -> Result<T, SidecarError> {
    let s = required(v, field)?;
    parse(&s).ok_or_else(|| {
        SidecarError::field(
            field,
            format!("{} is not one of: {}", shown(&s), allowed.trim_end()),
        )
    })
}

/// HS codes are 4-10 digits, written with optional dots after the 4th/6th/8th digit.
fn valid_hs_code(s: &str) -> bool {
    let digits: String = s.chars().filter(|c| *c != '.').collect();
    (4..=10).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
}

/// The image file must be a plain name inside the drop folder: the sidecar comes from a
/// scanner workstation and is not trusted to name paths.
pub fn check_drop_file_name(name: &str, field: &str) -> Result<(), SidecarError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.contains(['/', '\\', ':'])
        && !name.chars().any(char::is_control)
        && name != "."
        && name != ".."
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(SidecarError::field(
            field,
            format!(
                "{} must be a plain file name in the drop folder (no directories, no '..', no control characters)",
                shown(name)
            ),
        ))
    }
}

/// `<stem>.low.<ext>` for an image file `<stem>.<ext>`.
pub fn low_energy_name(image_file: &str) -> Option<String> {
    let (stem, ext) = image_file.rsplit_once('.')?;
    Some(format!("{stem}.low.{ext}"))
}

impl ScanMeta {
    /// Parses and validates a sidecar against the contract and `limits`, with `now` as the
    /// node's clock.
    pub fn from_json(
        bytes: &[u8],
        limits: &ValidationLimits,
        now: OffsetDateTime,
    ) -> Result<Self, SidecarError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| SidecarError::Json(e.to_string()))?;
        if !value.is_object() {
            return Err(SidecarError::Json(
                "the top level must be a JSON object".into(),
            ));
        }
        let raw: RawSidecar = serde_path_to_error::deserialize(&value).map_err(|e| {
            let path = e.path().to_string();
            // serde quotes the offending value ("invalid type: string \"…\""): cut it.
            let msg = e.into_inner().to_string();
            let msg = if msg.chars().count() > 200 {
                format!("{}... (cut)", msg.chars().take(200).collect::<String>())
            } else {
                msg
            };
            SidecarError::field(path, msg)
        })?;

        let schema = required(raw.schema, "schema")?;
        if schema != SCAN_SCHEMA {
            return Err(SidecarError::field(
                "schema",
                format!(
                    "{} is not supported; this node reads {SCAN_SCHEMA:?}",
                    shown(&schema)
                ),
            ));
        }
        let scan_id = required(raw.scan_id, "scan_id")?;
        if !is_valid_scan_id(&scan_id) {
            return Err(SidecarError::field(
                "scan_id",
                format!(
                    "{} must be 1-128 characters of A-Z a-z 0-9 . _ - and not start with '.'",
                    shown(&scan_id)
                ),
            ));
        }
        let scanner_id = identifier(raw.scanner_id, "scanner_id")?;
        let site_id = identifier(raw.site_id, "site_id")?;

        let ts = required(raw.scanned_at, "scanned_at")?;
        let scanned_at = OffsetDateTime::parse(&ts, &Rfc3339).map_err(|_| {
            SidecarError::field(
                "scanned_at",
                format!(
                    "{} is not an RFC 3339 timestamp with a zone, like 2026-11-28T03:14:02Z",
                    shown(&ts)
                ),
            )
        })?;
        if scanned_at > now + limits.max_future {
            return Err(SidecarError::field(
                "scanned_at",
                format!(
                    "{ts:?} is more than {}s ahead of this node's clock ({}): check the scanner's clock (NTP)",
                    limits.max_future.as_secs(),
                    now.format(&Rfc3339).unwrap_or_default()
                ),
            ));
        }
        if scanned_at < now - limits.max_age {
            return Err(SidecarError::field(
                "scanned_at",
                format!(
                    "{ts:?} is older than the {} days ingest.max_scan_age_days allows",
                    limits.max_age.as_secs() / 86400
                ),
            ));
        }

        let direction = enum_field(
            raw.direction,
            "direction",
            Direction::parse,
            Direction::ALLOWED,
        )?;

        let raw_ids = raw.container_ids.unwrap_or_default();
        if raw_ids.len() > MAX_CONTAINER_IDS {
            return Err(SidecarError::field(
                "container_ids",
                format!(
                    "lists {} containers; at most {MAX_CONTAINER_IDS} are allowed",
                    raw_ids.len()
                ),
            ));
        }
        let mut container_ids = Vec::new();
        for (i, c) in raw_ids.iter().enumerate() {
            if c.chars().count() > MAX_CONTAINER_ID_CHARS || c.chars().any(char::is_control) {
                return Err(SidecarError::field(
                    format!("container_ids[{i}]"),
                    format!(
                        "{} is not an ISO 6346 container id (at most {MAX_CONTAINER_ID_CHARS} printable characters)",
                        shown(c)
                    ),
                ));
            }
            let id = ContainerId::parse(c)
                .map_err(|e| SidecarError::field(format!("container_ids[{i}]"), e.to_string()))?;
            if container_ids.contains(&id) {
                return Err(SidecarError::field(
                    format!("container_ids[{i}]"),
                    format!("{id} is listed twice"),
                ));
            }
            container_ids.push(id);
        }
        if let Some(p) = &raw.vehicle_plate {
            text(p.trim(), "vehicle_plate", MAX_PLATE_CHARS)?;
        }
        let vehicle_plate = raw
            .vehicle_plate
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty());
        if container_ids.is_empty() && vehicle_plate.is_none() {
            return Err(SidecarError::field(
                "container_ids",
                "is empty and there is no vehicle_plate: a scan must name what was scanned",
            ));
        }

        let d = required(raw.declaration, "declaration")?;
        let number = identifier(d.number, "declaration.number")?;
        let regime = enum_field(
            d.regime,
            "declaration.regime",
            Regime::parse,
            Regime::ALLOWED,
        )?;
        let allowed_dirs: &[Direction] = match regime {
            Regime::Transit => &[Direction::Entry, Direction::Exit],
            Regime::Import => &[Direction::Import, Direction::Entry],
            Regime::Export => &[Direction::Export, Direction::Exit],
        };
        if !allowed_dirs.contains(&direction) {
            return Err(SidecarError::field(
                "direction",
                format!(
                    "{direction:?} does not fit declaration.regime {:?}; allowed: {}",
                    regime.as_str(),
                    allowed_dirs
                        .iter()
                        .map(|d| d.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let exit_site = match d.exit_site {
            Some(s) => Some(identifier(Some(s), "declaration.exit_site")?),
            None => None,
        };
        if regime == Regime::Transit && direction == Direction::Entry && exit_site.is_none() {
            return Err(SidecarError::field(
                "declaration.exit_site",
                "is required for a transit entry scan: it says which site will scan the exit",
            ));
        }
        if regime == Regime::Transit && container_ids.is_empty() {
            return Err(SidecarError::field(
                "container_ids",
                "is empty: a transit scan needs the container id to pair entry and exit",
            ));
        }
        let raw_goods = required(d.goods, "declaration.goods")?;
        if raw_goods.len() > MAX_GOODS {
            return Err(SidecarError::field(
                "declaration.goods",
                format!(
                    "lists {} goods lines; at most {MAX_GOODS} are allowed",
                    raw_goods.len()
                ),
            ));
        }
        let mut goods = Vec::with_capacity(raw_goods.len());
        for (i, g) in raw_goods.into_iter().enumerate() {
            let field = format!("declaration.goods[{i}].hs_code");
            let hs_code = required(g.hs_code, &field)?;
            if !valid_hs_code(&hs_code) {
                return Err(SidecarError::field(
                    field,
                    format!(
                        "{} is not an HS code (4 to 10 digits, dots allowed, like 8703.23)",
                        shown(&hs_code)
                    ),
                ));
            }
            if let Some(desc) = &g.description {
                text(
                    desc,
                    &format!("declaration.goods[{i}].description"),
                    MAX_DESCRIPTION_CHARS,
                )?;
            }
            if let Some(kg) = g.gross_kg {
                if !(kg.is_finite() && kg >= 0.0) {
                    return Err(SidecarError::field(
                        format!("declaration.goods[{i}].gross_kg"),
                        format!("{kg} must be a non-negative number"),
                    ));
                }
            }
            goods.push(Goods {
                hs_code,
                description: g.description,
                packages: g.packages,
                gross_kg: g.gross_kg,
            });
        }

        let img = required(raw.image, "image")?;
        let file = required(img.file, "image.file")?;
        check_drop_file_name(&file, "image.file")?;
        let pixel_meaning = enum_field(
            img.pixel_meaning,
            "image.pixel_meaning",
            PixelMeaning::parse,
            PixelMeaning::ALLOWED,
        )?;
        let pixel_mm = match img.pixel_mm {
            None => None,
            Some(v)
                if v.len() == 2 && v.iter().all(|x| x.is_finite() && *x > 0.0 && *x <= 100.0) =>
            {
                Some([v[0], v[1]])
            }
            Some(v) => {
                return Err(SidecarError::field(
                    "image.pixel_mm",
                    if v.len() == 2 {
                        format!("{v:?} must be [horizontal, vertical] in mm, each in (0, 100]")
                    } else {
                        format!(
                            "has {} values; it must be [horizontal, vertical] in mm, each in (0, 100]",
                            v.len()
                        )
                    },
                ))
            }
        };
        let cab_side = match img.cab_side {
            None => None,
            s => Some(enum_field(
                s,
                "image.cab_side",
                CabSide::parse,
                CabSide::ALLOWED,
            )?),
        };

        Ok(ScanMeta {
            scan_id,
            scanner_id,
            site_id,
            scanned_at,
            direction,
            container_ids,
            vehicle_plate,
            declaration: Declaration {
                number,
                regime,
                exit_site,
                goods,
            },
            image: ImageRef {
                file,
                pixel_meaning,
                pixel_mm,
                cab_side,
            },
            raw: value,
        })
    }

    /// The optional low-energy image of a dual-energy scanner: `<stem>.low.<ext>`.
    pub fn low_energy_file(&self) -> Option<String> {
        low_energy_name(&self.image.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-28 04:00:00 UTC);

    fn good() -> serde_json::Value {
        serde_json::json!({
          "schema": "riac.scan/1",
          "scan_id": "KHI-P1-20261128-000123",
          "scanner_id": "KHI-P1",
          "site_id": "KHI",
          "scanned_at": "2026-11-28T03:14:02Z",
          "direction": "entry",
          "container_ids": ["MSCU1234566"],
          "vehicle_plate": "TLH-4471",
          "declaration": {
            "number": "KPPI-TI-0012345-2026",
            "regime": "transit",
            "exit_site": "TKM",
            "goods": [{"hs_code": "8703.23", "description": "used cars", "packages": 2, "gross_kg": 3100}]
          },
          "image": {
            "file": "KHI-P1-20261128-000123.tiff",
            "pixel_meaning": "transmission",
            "pixel_mm": [5.0, 5.0],
            "cab_side": "left"
          },
          "vendor_extra": {"kv": 6.0}
        })
    }

    fn parse(v: &serde_json::Value) -> Result<ScanMeta, SidecarError> {
        ScanMeta::from_json(v.to_string().as_bytes(), &ValidationLimits::default(), NOW)
    }

    fn field_of(v: serde_json::Value) -> String {
        parse(&v)
            .unwrap_err()
            .field_name()
            .unwrap_or("<json>")
            .to_string()
    }

    #[test]
    fn design_example_parses() {
        let m = parse(&good()).unwrap();
        assert_eq!(m.scan_id, "KHI-P1-20261128-000123");
        assert_eq!(m.direction, Direction::Entry);
        assert_eq!(m.declaration.regime, Regime::Transit);
        assert_eq!(m.container_ids[0].as_str(), "MSCU1234566");
        assert_eq!(m.image.pixel_mm, Some([5.0, 5.0]));
        assert_eq!(m.raw["vendor_extra"]["kv"], 6.0);
        assert_eq!(
            m.low_energy_file().unwrap(),
            "KHI-P1-20261128-000123.low.tiff"
        );
    }

    #[test]
    fn each_error_names_its_field() {
        let mut v = good();
        v["schema"] = "riac.scan/2".into();
        assert_eq!(field_of(v), "schema");

        let mut v = good();
        v.as_object_mut().unwrap().remove("scan_id");
        assert_eq!(field_of(v), "scan_id");

        let mut v = good();
        v["container_ids"][0] = "MSCU1234567".into();
        let e = parse(&v).unwrap_err();
        assert_eq!(e.field_name(), Some("container_ids[0]"));
        assert!(e.to_string().contains("check digit"), "{e}");

        let mut v = good();
        v["scanned_at"] = "yesterday".into();
        assert_eq!(field_of(v), "scanned_at");

        let mut v = good();
        v["scanned_at"] = "2026-11-28T05:00:00Z".into();
        assert_eq!(field_of(v), "scanned_at");

        let mut v = good();
        v["direction"] = "import".into();
        assert_eq!(field_of(v), "direction");

        let mut v = good();
        v["declaration"]
            .as_object_mut()
            .unwrap()
            .remove("exit_site");
        assert_eq!(field_of(v), "declaration.exit_site");

        let mut v = good();
        v["declaration"]["goods"][0]["hs_code"] = "cars".into();
        assert_eq!(field_of(v), "declaration.goods[0].hs_code");

        let mut v = good();
        v["declaration"]["goods"][0]["packages"] = "two".into();
        assert_eq!(field_of(v), "declaration.goods[0].packages");

        let mut v = good();
        v["image"]["file"] = "../../etc/passwd".into();
        assert_eq!(field_of(v), "image.file");

        let mut v = good();
        v["image"]["pixel_mm"] = serde_json::json!([5.0]);
        assert_eq!(field_of(v), "image.pixel_mm");

        let mut v = good();
        v["image"]["pixel_meaning"] = "xray".into();
        let e = parse(&v).unwrap_err();
        assert!(e.to_string().contains("transmission attenuation"), "{e}");
    }

    #[test]
    fn text_and_lists_are_bounded_and_control_characters_refused() {
        let mut v = good();
        v["vehicle_plate"] = "X".repeat(900_000).into();
        let e = parse(&v).unwrap_err();
        assert_eq!(e.field_name(), Some("vehicle_plate"));
        assert!(e.to_string().len() < 200, "{e}");
        for bad in ["TLH\u{0}1", "TLH\u{1b}[31m", "TLH\r\nX"] {
            let mut v = good();
            v["vehicle_plate"] = bad.into();
            assert_eq!(field_of(v), "vehicle_plate", "{bad:?}");
        }
        let mut v = good();
        v["declaration"]["goods"][0]["description"] = "y".repeat(257).into();
        assert_eq!(field_of(v), "declaration.goods[0].description");
        let mut v = good();
        v["declaration"]["goods"][0]["description"] = "used\ncars".into();
        assert_eq!(field_of(v), "declaration.goods[0].description");
        let mut v = good();
        let line = v["declaration"]["goods"][0].clone();
        v["declaration"]["goods"] = serde_json::Value::Array(vec![line; 20_000]);
        assert_eq!(field_of(v), "declaration.goods");
        let mut v = good();
        v["container_ids"] = serde_json::json!(vec!["MSCU1234566"; 17]);
        assert_eq!(field_of(v), "container_ids");
        let mut v = good();
        v["container_ids"][0] = format!("MSCU1234566{}", " ".repeat(100_000)).into();
        let e = parse(&v).unwrap_err();
        assert_eq!(e.field_name(), Some("container_ids[0]"));
        assert!(e.to_string().len() < 300, "{e}");
        let mut v = good();
        v["declaration"]["number"] = "A\u{7}B".into();
        assert_eq!(field_of(v), "declaration.number");
        let mut v = good();
        v["image"]["file"] = "a\nb.tiff".into();
        assert_eq!(field_of(v), "image.file");
        let mut v = good();
        v["declaration"]["goods"][0]["packages"] = "2".repeat(100_000).into();
        let e = parse(&v).unwrap_err();
        assert_eq!(e.field_name(), Some("declaration.goods[0].packages"));
        assert!(e.to_string().len() < 300, "{e}");
        let mut v = good();
        v["image"]["pixel_mm"] = serde_json::json!(vec![5.0; 50_000]);
        let e = parse(&v).unwrap_err();
        assert_eq!(e.field_name(), Some("image.pixel_mm"));
        assert!(e.to_string().len() < 300, "{e}");
        let mut v = good();
        v["declaration"]["goods"][0]["hs_code"] = "9".repeat(100_000).into();
        assert!(parse(&v).unwrap_err().to_string().len() < 300);
        // The limits themselves are allowed.
        let mut v = good();
        v["vehicle_plate"] = "P".repeat(MAX_PLATE_CHARS).into();
        v["declaration"]["goods"][0]["description"] = "d".repeat(MAX_DESCRIPTION_CHARS).into();
        assert!(parse(&v).is_ok());
    }

    #[test]
    fn not_json_is_a_json_error() {
        let e =
            ScanMeta::from_json(b"{\"schema\": ", &ValidationLimits::default(), NOW).unwrap_err();
        assert!(matches!(e, SidecarError::Json(_)));
        let e = ScanMeta::from_json(b"[1]", &ValidationLimits::default(), NOW).unwrap_err();
        assert!(matches!(e, SidecarError::Json(_)));
    }

    #[test]
    fn hs_codes() {
        for ok in ["8703", "8703.23", "870323", "8703.23.10", "8703231000"] {
            assert!(valid_hs_code(ok), "{ok}");
        }
        for bad in ["870", "8703..23", ".8703", "8703.", "87a3", "87032310001"] {
            assert!(!valid_hs_code(bad), "{bad}");
        }
    }
}
