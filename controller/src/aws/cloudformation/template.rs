//! Reads which parameters a CloudFormation template declares (its top-level `Parameters`
//! keys), and which of its Lambda functions run the image a parameter gives them, from a JSON
//! or YAML template body.
//!
//! Pure: no I/O, no AWS types. Must never guess: a body it cannot read is an error, and the
//! caller decides what that means.
//!
//! YAML is read into the JSON a JSON template would hold, as CloudFormation does: a short-form
//! intrinsic function (a local tag: `!Ref X`, `!Sub s`, `!Join [d, l]`, …) becomes its long
//! form (`{"Ref": "X"}`, `{"Fn::Sub": s}`, `{"Fn::Join": [d, l]}`), so one reading serves both.
//!
//! # Caveats
//! - Only string keys count (CloudFormation's logical ids are alphanumeric; a key YAML reads as
//!   a number, such as `2024`, is left out).
//! - A YAML alias is read as a copy of its anchor's value.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};
use yaml_rust2::Yaml;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A template's top-level mapping, and what its format calls a mapping (for messages).
struct Top {
    map: Map<String, Value>,
    mapping: &'static str,
}

/// The template's top-level mapping, or why the body could not be read as a template.
fn top_level(body: &str) -> Result<Top, String> {
    // A byte-order mark (editors on Windows write one) is not whitespace to `trim_start`.
    let body = body.strip_prefix('\u{feff}').unwrap_or(body);
    // JSON may use tabs, which YAML does not allow for indentation.
    let (value, mapping) = if body.trim_start().starts_with('{') {
        let value = serde_json::from_str(body).map_err(|e| format!("not valid JSON: {e}"))?;
        (value, "an object")
    } else {
        let mut docs = yaml_documents(body)?;
        if docs.len() != 1 {
            return Err(format!("{} YAML documents, not one", docs.len()));
        }
        (docs.pop().unwrap_or_default(), "a mapping")
    };
    match value {
        Value::Object(map) => Ok(Top { map, mapping }),
        _ => Err(format!("its top level is not {mapping}")),
    }
}

/// The names under the template's top-level `Parameters` (none when it has no such section),
/// or why the body could not be read as a template.
pub fn declared_parameters(body: &str) -> Result<BTreeSet<String>, String> {
    let Top { map, mapping } = top_level(body)?;
    match map.get("Parameters") {
        None | Some(Value::Null) => Ok(BTreeSet::new()),
        Some(Value::Object(parameters)) => Ok(parameters.keys().cloned().collect()),
        Some(_) => Err(format!("its Parameters section is not {mapping}")),
    }
}

/// The logical ids of the template's Lambda functions packaged as a container image that run
/// the image given in parameter `image`, in the template's order: resources of type
/// `AWS::Lambda::Function` whose `PackageType` is `Image` and whose `Code.ImageUri` refers to
/// `image`, or of type `AWS::Serverless::Function` whose `PackageType` is `Image` and whose
/// `ImageUri` does.
///
/// An `ImageUri` refers to `image` when it is
/// - `{"Ref": image}` (`!Ref image`);
/// - `Fn::Sub` (`!Sub`) of a string with `${image}` in it; in the `[string, variables]` form,
///   when `image` is not one of its variables, or a variable the string uses has a value that
///   refers to `image`;
/// - `Fn::Join` (`!Join`) with an element of its list that refers to `image`;
/// - `Fn::If` (`!If`) with either value referring to `image`.
///
/// Anything else is not counted: a literal URI, another parameter, an import, a mapping's
/// value (such a function runs another image, or one this cannot know), and a `PackageType`
/// written with an intrinsic function.
pub fn image_functions(body: &str, image: &str) -> Result<Vec<String>, String> {
    let Top { map, .. } = top_level(body)?;
    let runs_image = |r: &Value| {
        let uri = match r.get("Type").and_then(Value::as_str) {
            Some("AWS::Lambda::Function") => "/Properties/Code/ImageUri",
            Some("AWS::Serverless::Function") => "/Properties/ImageUri",
            _ => return false,
        };
        let package = r.pointer("/Properties/PackageType").and_then(Value::as_str);
        package == Some("Image") && r.pointer(uri).is_some_and(|uri| refers_to(uri, image))
    };
    Ok(match map.get("Resources") {
        Some(Value::Object(resources)) => resources
            .iter()
            .filter(|(_, r)| runs_image(r))
            .map(|(id, _)| id.clone())
            .collect(),
        _ => Vec::new(),
    })
}

/// Whether `value` refers to parameter `p` (see [`image_functions`] for the forms read).
fn refers_to(value: &Value, p: &str) -> bool {
    let function = value.as_object().filter(|o| o.len() == 1);
    let Some((name, args)) = function.and_then(|o| o.iter().next()) else {
        return false;
    };
    let any = |values: &[Value]| values.iter().any(|v| refers_to(v, p));
    match (name.as_str(), args) {
        ("Ref", Value::String(name)) => name == p,
        ("Fn::Sub", Value::String(text)) => uses(text, p),
        ("Fn::Sub", Value::Array(form)) => {
            let Some(text) = form.first().and_then(Value::as_str) else {
                return false;
            };
            let variables = form.get(1).and_then(Value::as_object);
            let own = variables.is_some_and(|v| v.contains_key(p));
            let through = |(name, v): (&String, &Value)| uses(text, name) && refers_to(v, p);
            (!own && uses(text, p)) || variables.into_iter().flatten().any(through)
        }
        ("Fn::Join", Value::Array(form)) => {
            let list = form.get(1).and_then(Value::as_array);
            list.is_some_and(|l| any(l))
        }
        ("Fn::If", Value::Array(form)) => form.get(1..).is_some_and(any),
        _ => false,
    }
}

/// Whether `Fn::Sub` string `text` substitutes variable `name` (`${name}`; `${!name}` is the
/// literal text `${name}`).
fn uses(text: &str, name: &str) -> bool {
    text.contains(&format!("${{{name}}}"))
}

/// How deep a YAML template's sequences and mappings may nest: JSON's limit when read
/// (serde_json refuses deeper), far beyond any template's.
const MAX_DEPTH: usize = 128;

/// The YAML documents in `body`, each as JSON (see the module's doc), or why it is not YAML.
/// The parser's events are taken one by one, not through its recursive `load`: nesting deeper
/// than [`MAX_DEPTH`] is refused instead of exhausting the stack and aborting the process (a
/// template of a few kilobytes, `- - - - …`, would).
fn yaml_documents(body: &str) -> Result<Vec<Value>, String> {
    let mut reader = YamlToJson::default();
    let mut parser = Parser::new_from_str(body);
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| format!("not valid YAML: {e}"))?;
        let end = event == Event::StreamEnd;
        reader.on_event(event, mark);
        if let Some(e) = reader.error.take() {
            return Err(format!("not valid YAML: {e}"));
        }
        if reader.open.len() > MAX_DEPTH {
            return Err(format!(
                "nested more than {MAX_DEPTH} levels deep (line {})",
                mark.line()
            ));
        }
        if end {
            return Ok(reader.docs);
        }
    }
}

/// Builds JSON values from YAML parser events. Scalars are typed as YAML's core schema types
/// them (`true`, `12`, `~`; quoted or tagged: a string); a mapping keeps its string keys; a
/// key twice in one mapping is an error.
#[derive(Default)]
struct YamlToJson {
    docs: Vec<Value>,
    /// The current document's top node, once read.
    root: Option<Value>,
    /// Sequences and mappings being read, innermost last.
    open: Vec<Open>,
    /// Anchored values by anchor id, for aliases.
    anchors: HashMap<usize, Value>,
    error: Option<String>,
}

/// A sequence or mapping being read, with its anchor (0: none) and tag.
struct Open {
    node: Node,
    anchor: usize,
    tag: Option<Tag>,
}

enum Node {
    Sequence(Vec<Value>),
    /// The entries so far, and a key read whose value is next.
    Mapping(Map<String, Value>, Option<Value>),
}

impl MarkedEventReceiver for YamlToJson {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::DocumentEnd => {
                let root = self.root.take().unwrap_or_default();
                self.docs.push(root);
            }
            Event::SequenceStart(anchor, tag) => self.open.push(Open {
                node: Node::Sequence(Vec::new()),
                anchor,
                tag,
            }),
            Event::MappingStart(anchor, tag) => self.open.push(Open {
                node: Node::Mapping(Map::new(), None),
                anchor,
                tag,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(Open { node, anchor, tag }) = self.open.pop() {
                    let value = match node {
                        Node::Sequence(items) => Value::Array(items),
                        Node::Mapping(entries, _) => Value::Object(entries),
                    };
                    self.add(long_form(tag.as_ref(), value), anchor, mark);
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let value = scalar(text, style, tag.as_ref());
                self.add(long_form(tag.as_ref(), value), anchor, mark);
            }
            Event::Alias(id) => {
                let value = self.anchors.get(&id).cloned().unwrap_or_default();
                self.add(value, 0, mark);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart => {}
        }
    }
}

impl YamlToJson {
    /// Puts a node read into the sequence or mapping it is in (as a key, or as the value of the
    /// key before it), or makes it the document's top node.
    fn add(&mut self, value: Value, anchor: usize, mark: Marker) {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        let twice = match self.open.last_mut().map(|o| &mut o.node) {
            None => {
                self.root = Some(value);
                None
            }
            Some(Node::Sequence(items)) => {
                items.push(value);
                None
            }
            Some(Node::Mapping(_, key @ None)) => {
                *key = Some(value);
                None
            }
            Some(Node::Mapping(entries, key)) => match key.take() {
                Some(Value::String(k)) => entries.insert(k.clone(), value).map(|_| k),
                // A key that is not a string is left out, with its value.
                _ => None,
            },
        };
        if let Some(k) = twice {
            self.error = Some(format!("`{k}` twice in one mapping (line {})", mark.line()));
        }
    }
}

/// A scalar's value: quoted, or tagged other than by YAML's core schema, a string; otherwise
/// typed as that schema types its text.
fn scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    let core = tag.is_none_or(|t| t.handle == "tag:yaml.org,2002:" && t.suffix != "str");
    if style != TScalarStyle::Plain || !core {
        return Value::String(text);
    }
    match Yaml::from_str(&text) {
        Yaml::Integer(i) => Value::from(i),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::String(r), Value::Number),
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Null => Value::Null,
        _ => Value::String(text),
    }
}

/// A node with a local tag (`!Ref`, `!Sub`, …) as CloudFormation's long form: `Ref` and
/// `Condition` keep their name, every other function is `Fn::` and its name.
fn long_form(tag: Option<&Tag>, value: Value) -> Value {
    let Some(name) = tag.filter(|t| t.handle == "!" && !t.suffix.is_empty()) else {
        return value;
    };
    let function = match name.suffix.as_str() {
        "Ref" | "Condition" => name.suffix.clone(),
        other => format!("Fn::{other}"),
    };
    Value::Object(Map::from_iter([(function, value)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small template nested thousands of levels deep is refused, not read by recursion
    /// (which overflowed the stack and aborted the process); one nested as deep as allowed
    /// reads.
    #[test]
    fn a_template_nested_too_deep_is_refused_without_overflowing_the_stack() {
        let deep = format!("Parameters:\n  X:\n    {}x\n", "- ".repeat(5_000));
        let why = declared_parameters(&deep).unwrap_err();
        assert!(why.contains("nested more than 128 levels deep"), "{why}");
        let flow = format!(
            "Parameters: {{}}\nX: {}{}\n",
            "[".repeat(120),
            "]".repeat(120)
        );
        assert!(declared_parameters(&flow).unwrap().is_empty());
    }

    #[test]
    fn image_functions_are_found_in_yaml_and_json_and_zip_functions_are_not() {
        let yaml = "Resources:\n  Api:\n    Type: AWS::Lambda::Function\n    Properties:\n      PackageType: Image\n      Code:\n        ImageUri: !Ref ImageUri\n  Zip:\n    Type: AWS::Lambda::Function\n    Properties:\n      Runtime: python3.12\n      Code:\n        ImageUri: !Ref ImageUri\n  Sam:\n    Type: AWS::Serverless::Function\n    Properties:\n      PackageType: Image\n      ImageUri: !Ref ImageUri\n  Bucket:\n    Type: AWS::S3::Bucket\n";
        assert_eq!(image_functions(yaml, "ImageUri").unwrap(), ["Api", "Sam"]);
        let json = r#"{"Resources": {"Worker": {"Type": "AWS::Lambda::Function", "Properties": {"PackageType": "Image", "Code": {"ImageUri": {"Ref": "ImageUri"}}}}, "Svc": {"Type": "AWS::ECS::Service", "Properties": {}}}}"#;
        assert_eq!(image_functions(json, "ImageUri").unwrap(), ["Worker"]);
        assert!(
            image_functions("Parameters: {}\n", "ImageUri")
                .unwrap()
                .is_empty()
        );
        assert!(image_functions("a: [\n", "ImageUri").is_err());
    }

    /// A template with one Lambda function of each type (`Code.ImageUri`, and a SAM function's
    /// `ImageUri`), each given `uri` as its image (YAML, indented as a property's value).
    fn yaml_functions(uri: &str) -> String {
        // A value on more than one line goes on indented under its key.
        let under = |indent: &str| uri.replace('\n', &format!("\n{indent}"));
        format!(
            "Parameters:\n  Image:\n    Type: String\n  Other:\n    Type: String\n\
             Resources:\n  Fn:\n    Type: AWS::Lambda::Function\n    Properties:\n      \
             PackageType: Image\n      Code:\n        ImageUri: {}\n  Sam:\n    \
             Type: AWS::Serverless::Function\n    Properties:\n      PackageType: Image\n      \
             ImageUri: {}\n",
            under("        "),
            under("      "),
        )
    }

    /// The same, in JSON, `uri` being the image's JSON.
    fn json_functions(uri: &str) -> String {
        format!(
            r#"{{"Parameters": {{"Image": {{"Type": "String"}}}}, "Resources": {{
              "Fn": {{"Type": "AWS::Lambda::Function", "Properties": {{"PackageType": "Image", "Code": {{"ImageUri": {uri}}}}}}},
              "Sam": {{"Type": "AWS::Serverless::Function", "Properties": {{"PackageType": "Image", "ImageUri": {uri}}}}}}}}}"#
        )
    }

    /// The templates of [`yaml_functions`] for each of `yaml` and of [`json_functions`] for each
    /// of `json`.
    fn templates(yaml: &[&str], json: &[&str]) -> Vec<String> {
        let yaml = yaml.iter().map(|uri| yaml_functions(uri));
        yaml.chain(json.iter().map(|uri| json_functions(uri)))
            .collect()
    }

    #[test]
    fn a_function_counts_when_its_image_uri_refers_to_the_image_parameter() {
        let yaml = [
            "!Ref Image",
            "{ Ref: Image }",
            "!Sub \"${Image}\"",
            "!Sub \"${AWS::AccountId}.dkr.ecr.${AWS::Region}.amazonaws.com/${Image}\"",
            "!Sub [\"${Repo}@${Image}\", { Repo: app }]",
            "!Sub\n  - \"${Uri}\"\n  - Uri: !Ref Image",
            "{ \"Fn::Sub\": \"${Image}\" }",
            "!Join [\"\", [!Ref Image]]",
            "!Join\n  - \"\"\n  - - !Sub \"${Image}\"",
            "{ \"Fn::Join\": [\"\", [{ Ref: Image }]] }",
            "!If [Prod, !Ref Image, !Ref Other]",
        ];
        let json = [
            r#"{"Ref": "Image"}"#,
            r#"{"Fn::Sub": "${AWS::AccountId}.dkr.ecr.${AWS::Region}.amazonaws.com/${Image}"}"#,
            r#"{"Fn::Sub": ["${Repo}@${Image}", {"Repo": "app"}]}"#,
            r#"{"Fn::Sub": ["${Uri}", {"Uri": {"Ref": "Image"}}]}"#,
            r#"{"Fn::Join": ["", [{"Ref": "Image"}]]}"#,
            r#"{"Fn::Join": [":", ["app", {"Fn::Sub": "${Image}"}]]}"#,
            r#"{"Fn::If": ["Prod", "fixed", {"Ref": "Image"}]}"#,
        ];
        for body in templates(&yaml, &json) {
            let counted = image_functions(&body, "Image");
            assert_eq!(counted, Ok(vec!["Fn".into(), "Sam".into()]), "{body}");
        }
    }

    /// A literal URI (even one that reads like the parameter's name or a `${…}`), another
    /// parameter, an escaped `${!Image}`, a `Sub` variable of the same name, or an import does
    /// not run the stage's image.
    #[test]
    fn a_function_whose_image_uri_does_not_refer_to_the_image_parameter_is_not_counted() {
        let yaml = [
            "111111111111.dkr.ecr.us-east-1.amazonaws.com/sidecar:1",
            "Image",
            "\"${Image}\"",
            "!Ref Other",
            "!Ref ImageUri",
            "!Sub \"${Other}\"",
            "!Sub \"${!Image}\"",
            "!Sub [\"${Image}\", { Image: fixed }]",
            "!Sub [\"${Uri}\", { Uri: !Ref Other }]",
            "!Join [\"\", [!Ref Other, \":1\"]]",
            "!ImportValue Image",
            "!GetAtt Image.Uri",
            "!FindInMap [Images, !Ref Image, Uri]",
        ];
        let json = [
            r#""Image""#,
            r#""${Image}""#,
            r#"{"Ref": "Other"}"#,
            r#"{"Fn::Sub": "${!Image}"}"#,
            r#"{"Fn::ImportValue": "Image"}"#,
        ];
        for body in templates(&yaml, &json) {
            assert_eq!(image_functions(&body, "Image"), Ok(vec![]), "{body}");
        }
    }

    /// A YAML alias reads as its anchor's value, tag included.
    #[test]
    fn an_alias_of_a_reference_to_the_image_parameter_counts() {
        let body = "Resources:\n  Api:\n    Type: AWS::Lambda::Function\n    Properties:\n      \
                    PackageType: Image\n      Code:\n        ImageUri: &image !Ref Image\n  \
                    Worker:\n    Type: AWS::Serverless::Function\n    Properties:\n      \
                    PackageType: Image\n      ImageUri: *image\n";
        let counted = image_functions(body, "Image");
        assert_eq!(counted, Ok(vec!["Api".into(), "Worker".into()]));
    }

    #[test]
    fn a_json_template_with_a_byte_order_mark_and_tabs_is_read_as_json() {
        let body = "\u{feff}{\n\t\"Parameters\": {\"Env\": {\"Type\": \"String\"}}\n}";
        assert_eq!(
            declared_parameters(body),
            Ok(BTreeSet::from(["Env".to_string()]))
        );
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn yaml_with_short_form_functions() {
        let body = "AWSTemplateFormatVersion: '2010-09-09'\n\
                    Parameters:\n  ImageUri:\n    Type: String\n  \"Env\":\n    Type: String\n    \
                    Default: beta\n\
                    Conditions:\n  Prod: !Equals [!Ref Env, prod]\n\
                    Resources:\n  Image:\n    Type: AWS::SSM::Parameter\n    Properties:\n      \
                    Name: !Sub \"/${AWS::StackName}/image\"\n      Value: !Ref ImageUri\n      \
                    Tier: !If\n        - Prod\n        - Advanced\n        - Standard\n";
        assert_eq!(declared_parameters(body), Ok(names(&["Env", "ImageUri"])));
    }

    #[test]
    fn json_with_tabs() {
        let body = "{\n\t\"Parameters\": {\"A\": {\"Type\": \"String\"}, \"B\": {}},\n\t\"Resources\": {}\n}";
        assert_eq!(declared_parameters(body), Ok(names(&["A", "B"])));
    }

    #[test]
    fn no_parameters_section() {
        assert_eq!(declared_parameters("Resources: {}\n"), Ok(names(&[])));
        assert_eq!(
            declared_parameters("Parameters:\nResources: {}\n"),
            Ok(names(&[]))
        );
        assert_eq!(declared_parameters("{\"Resources\": {}}"), Ok(names(&[])));
    }

    /// The keys indented two spaces under a top-level `Parameters:` line, as the templates
    /// shipped in this repository are written.
    fn by_indentation(body: &str) -> BTreeSet<String> {
        let section = body
            .split_once("\nParameters:\n")
            .map_or("", |(_, rest)| rest);
        section
            .lines()
            .take_while(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('#'))
            .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.ends_with(':'))
            .map(|l| l.trim().trim_end_matches(':').to_string())
            .collect()
    }

    #[test]
    fn the_templates_shipped_here_are_read() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut read = 0;
        for dir in ["accounts/bootstrap", "docs/examples"] {
            let mut stack = vec![root.join(dir)];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let body = std::fs::read_to_string(&path).unwrap();
                    let is_template = path.extension().is_some_and(|e| e == "yaml")
                        && body.contains("\nResources:");
                    if !is_template {
                        continue;
                    }
                    let declared = declared_parameters(&body).unwrap();
                    assert!(!declared.is_empty(), "{}", path.display());
                    assert_eq!(declared, by_indentation(&body), "{}", path.display());
                    read += 1;
                }
            }
        }
        assert!(read >= 10, "{read} templates");
    }

    #[test]
    fn what_is_not_a_template_is_an_error() {
        for body in [
            "Parameters: [A, B]\n",
            "- a\n- b\n",
            "Parameters:\n  A: {}\n  A: {}\n",
            "{\"Parameters\": ",
            "a: 1\n---\nb: 2\n",
            "",
        ] {
            assert!(declared_parameters(body).is_err(), "{body:?}");
        }
    }
}
