#!/usr/bin/env python3
"""JSON schemas for kubeconform, made offline (this machine reaches no schema registry).

Usage: k8s-json-schema.py SWAGGER_JSON OUT_DIR [CRD_YAML...]

From the Kubernetes OpenAPI v2 document (api/openapi-spec/swagger.json of the
k8s.io/kubernetes module the test bed builds), writes one standalone schema per kind in
kubeconform's layout, OUT_DIR/<kind>[-<group>]-<version>.json (group: its first
dot-separated part, none for the core group), with every $ref inlined as a local
definition. Strict, like kubeconform's "-strict" schema sets: every object that lists
its properties refuses others. Each CRD_YAML adds its kinds' openAPIV3Schema, strict
the same way, so CognitoUnauthCredential objects are validated too.
"""

import json
import os
import sys

import yaml

# Types the API server accepts in two JSON forms, which the OpenAPI document writes as
# one `format` (as kubeconform's schema sets do).
TWO_FORMS = {
    "int-or-string": [{"type": "string"}, {"type": "integer"}],
}
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"


def strict(schema):
    """Every object schema that lists its properties refuses others; walks the schema
    keywords only (a property may well be called "format" or "properties")."""
    if not isinstance(schema, dict):
        return schema
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in TWO_FORMS and schema.get("type") in ("string", None):
        del schema["format"]
        schema.pop("type", None)
        schema["oneOf"] = TWO_FORMS[fmt]
    if isinstance(schema.get("properties"), dict):
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        for sub in schema["properties"].values():
            strict(sub)
    for key in ("items", "additionalProperties", "not"):
        strict(schema.get(key))
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            strict(sub)
    for sub in (schema.get("definitions") or {}).values():
        strict(sub)
    return schema


def refs(node, found):
    """The definition names that `node` refers to."""
    if isinstance(node, dict):
        r = node.get("$ref")
        if isinstance(r, str) and r.startswith("#/definitions/"):
            found.add(r[len("#/definitions/") :])
        for v in node.values():
            refs(v, found)
    elif isinstance(node, list):
        for v in node:
            refs(v, found)
    return found


def file_name(group, version, kind):
    suffix = f"-{group.split('.')[0]}" if group else ""
    return f"{kind.lower()}{suffix}-{version.lower()}.json"


def with_type_meta(schema, group, version, kind):
    """apiVersion and kind pinned to this kind (as the API server would insist)."""
    api_version = f"{group}/{version}" if group else version
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "enum": [api_version]}
    props["kind"] = {"type": "string", "enum": [kind]}
    return schema


def main(swagger_path, out, crd_paths):
    os.makedirs(out, exist_ok=True)
    with open(swagger_path) as f:
        defs = json.load(f)["definitions"]
    # Quantity: a string or a number ("1", 0.5 and "500m" are all accepted).
    defs[QUANTITY] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    written = 0
    for name, schema in defs.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            needed, todo = set(), [name]
            while todo:
                n = todo.pop()
                if n in needed:
                    continue
                needed.add(n)
                todo.extend(refs(defs[n], set()) - needed)
            doc = json.loads(json.dumps(schema))
            doc["definitions"] = {n: json.loads(json.dumps(defs[n])) for n in needed}
            with_type_meta(doc, gvk["group"], gvk["version"], gvk["kind"])
            path = os.path.join(out, file_name(gvk["group"], gvk["version"], gvk["kind"]))
            with open(path, "w") as f:
                json.dump(strict(doc), f)
            written += 1
    for crd_path in crd_paths:
        with open(crd_path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for v in crd["spec"]["versions"]:
                    doc = json.loads(json.dumps(v["schema"]["openAPIV3Schema"]))
                    doc.setdefault("properties", {})["metadata"] = {"type": "object"}
                    with_type_meta(doc, group, v["name"], kind)
                    path = os.path.join(out, file_name(group, v["name"], kind))
                    with open(path, "w") as f:
                        json.dump(strict(doc), f)
                    written += 1
    if written == 0:
        sys.exit(f"no kinds found in {swagger_path}")
    print(f"{written} schemas in {out}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
