// Draws an AsyncAPI 3.0 document: the service, its servers, each channel with its
// operations and messages, and the payload schemas as tables of fields.
// Self-contained: no library, no request. Text from the document only ever goes
// into textContent, never into markup.
(function () {
  "use strict";

  var doc = JSON.parse(document.getElementById("asyncapi-document").textContent);
  var components = doc.components || {};
  var schemas = components.schemas || {};
  var MAX_DEPTH = 8;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    var key;
    for (key in attrs || {}) {
      if (Object.prototype.hasOwnProperty.call(attrs, key) && attrs[key] !== undefined) {
        if (key === "text") node.textContent = attrs[key];
        else node.setAttribute(key, attrs[key]);
      }
    }
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function own(obj, key) {
    return obj !== null && typeof obj === "object" && Object.prototype.hasOwnProperty.call(obj, key);
  }

  function entries(obj) {
    return Object.keys(obj || {}).map(function (key) { return [key, obj[key]]; });
  }

  // JSON pointers within this document ("#/components/schemas/Order").
  function resolve(pointer) {
    if (typeof pointer !== "string" || pointer.charAt(0) !== "#") return undefined;
    var node = doc;
    var parts = pointer.slice(1).split("/").slice(1);
    for (var i = 0; i < parts.length; i++) {
      var part = parts[i].replace(/~1/g, "/").replace(/~0/g, "~");
      if (!own(node, part)) return undefined;
      node = node[part];
    }
    return node;
  }

  function refName(pointer) {
    var parts = String(pointer).split("/");
    return parts[parts.length - 1].replace(/~1/g, "/").replace(/~0/g, "~");
  }

  function deref(value) {
    var seen = 0;
    while (own(value, "$ref") && seen < 32) {
      value = resolve(value.$ref);
      seen++;
    }
    return value;
  }

  function schemaLink(pointer) {
    var name = refName(pointer);
    if (String(pointer).indexOf("#/components/schemas/") === 0) {
      return el("a", { href: "#schema-" + name, text: name });
    }
    return el("span", { text: name });
  }

  // A schema's type, as text (for data-type) and as nodes (with links to named schemas).
  function typeOf(schema) {
    if (schema === true || schema === undefined || schema === null) return { text: "any", nodes: ["any"] };
    if (schema === false) return { text: "nothing", nodes: ["nothing"] };
    if (own(schema, "$ref")) {
      return { text: refName(schema.$ref), nodes: [schemaLink(schema.$ref)] };
    }
    var union = schema.anyOf || schema.oneOf;
    if (Array.isArray(union)) return join(union.map(typeOf), " | ");
    if (Array.isArray(schema.allOf) && schema.allOf.length === 1) return typeOf(schema.allOf[0]);
    var kind = schema.type;
    if (Array.isArray(kind)) {
      return join(kind.map(function (k) { return typeOf(Object.assign({}, schema, { type: k })); }), " | ");
    }
    if (kind === "array") {
      if (Array.isArray(schema.items)) {
        return wrap("tuple[", join(schema.items.map(typeOf), ", "), "]");
      }
      return wrap("array of ", schema.items === undefined ? typeOf(true) : typeOf(schema.items), "");
    }
    if (kind === "object" && schema.additionalProperties !== undefined &&
        schema.additionalProperties !== false && !schema.properties) {
      var values = schema.additionalProperties === true ? typeOf(true) : typeOf(schema.additionalProperties);
      return wrap("map of string \u2192 ", values, "");
    }
    if (own(schema, "const")) return plain("const " + JSON.stringify(schema["const"]));
    var label = kind || (Array.isArray(schema["enum"]) ? "enum" : "any");
    // A protobuf scalar says its own type (sint32, fixed64...), which says more than a format.
    var proto = schema["x-protobuf-type"];
    var detail = proto && String(proto).indexOf(".") < 0 ? proto : schema.format;
    if (detail && detail !== kind) label += " (" + detail + ")";
    if (schema.contentEncoding) label += " (" + schema.contentEncoding + ")";
    if (schema.title && kind === "object") label = schema.title;
    return plain(label);
  }

  function plain(text) { return { text: text, nodes: [text] }; }

  function wrap(before, inner, after) {
    return { text: before + inner.text + after, nodes: [before].concat(inner.nodes, [after]) };
  }

  function join(parts, sep) {
    var text = [], nodes = [];
    parts.forEach(function (part, i) {
      if (i) { text.push(sep); nodes.push(sep); }
      text.push(part.text);
      nodes = nodes.concat(part.nodes);
    });
    return { text: text.join(""), nodes: nodes };
  }

  function notes(schema) {
    var out = [];
    schema = schema || {};
    var base = own(schema, "$ref") ? deref(schema) || {} : schema;
    if (schema.description) out.push(schema.description);
    else if (own(schema, "$ref") && base.description) out.push(String(base.description).split("\n")[0]);
    if (Array.isArray(base["enum"])) out.push("one of: " + enumValues(base));
    if (own(schema, "default")) out.push("default " + JSON.stringify(schema["default"]));
    if (schema.pattern) out.push("pattern " + schema.pattern);
    if (own(schema, "minimum")) out.push("\u2265 " + schema.minimum);
    if (own(schema, "maximum")) out.push("\u2264 " + schema.maximum);
    if (schema.uniqueItems) out.push("unique items");
    if (own(schema, "x-protobuf-number")) out.push("field " + schema["x-protobuf-number"]);
    if (schema["x-protobuf-oneof"]) out.push("oneof " + schema["x-protobuf-oneof"]);
    if (schema["x-protobuf-json-name"]) out.push("JSON name " + schema["x-protobuf-json-name"]);
    if (schema["x-python-type"]) out.push("Python type " + schema["x-python-type"]);
    return out.join(" \u00b7 ");
  }

  // "placed", "paid" -- or PLACED ("placed"), PAID ("paid") when the names are known.
  function enumValues(schema) {
    var names = Array.isArray(schema["x-enum-names"]) ? schema["x-enum-names"] : null;
    return schema["enum"].map(function (value, i) {
      var text = JSON.stringify(value);
      return names && names[i] !== undefined && names[i] !== value ? names[i] + " (" + text + ")" : text;
    }).join(", ");
  }

  // The object schema whose fields a field's value has, and the path suffix to reach them.
  function nested(schema, stack) {
    var suffix = "";
    for (var step = 0; step < 8; step++) {
      if (own(schema, "$ref")) {
        if (stack.indexOf(schema.$ref) >= 0) return null;
        stack = stack.concat([schema.$ref]);
        schema = resolve(schema.$ref);
        continue;
      }
      if (!schema || typeof schema !== "object") return null;
      var union = schema.anyOf || schema.oneOf;
      if (Array.isArray(union)) {
        var rest = union.filter(function (s) { return !(s && s.type === "null"); });
        if (rest.length !== 1) return null;
        schema = rest[0];
        continue;
      }
      if (Array.isArray(schema.allOf) && schema.allOf.length === 1) { schema = schema.allOf[0]; continue; }
      var kind = Array.isArray(schema.type)
        ? schema.type.filter(function (k) { return k !== "null"; })[0] : schema.type;
      if (kind === "array" && schema.items && !Array.isArray(schema.items)) {
        suffix += "[]"; schema = schema.items; continue;
      }
      if (kind === "object" && schema.properties) return { schema: schema, suffix: suffix, stack: stack };
      if (kind === "object" && schema.additionalProperties && typeof schema.additionalProperties === "object") {
        suffix += "{}"; schema = schema.additionalProperties; continue;
      }
      return null;
    }
    return null;
  }

  function fieldRows(object, prefix, depth, stack, rows) {
    var required = Array.isArray(object.required) ? object.required : [];
    entries(object.properties).forEach(function (pair) {
      var name = pair[0], schema = pair[1];
      var path = prefix + name;
      var type = typeOf(schema);
      var isRequired = required.indexOf(name) >= 0;
      var fieldCell = el("td", { "class": "field", text: path });
      fieldCell.style.paddingLeft = (8 + depth * 18) + "px";
      rows.push(el("tr", {
        "data-field": path, "data-type": type.text, "data-required": String(isRequired)
      }, [
        fieldCell,
        el("td", { "class": "type" }, type.nodes),
        el("td", { "class": "required" }, [
          el("span", { "class": isRequired ? "yes" : "no", text: isRequired ? "required" : "optional" })
        ]),
        el("td", { "class": "notes", text: notes(schema) })
      ]));
      var inner = depth < MAX_DEPTH ? nested(schema, stack) : null;
      if (inner) fieldRows(inner.schema, path + inner.suffix + ".", depth + 1, inner.stack, rows);
    });
    return rows;
  }

  function schemaTable(schema, stack) {
    var head = el("tr", {}, ["Field", "Type", "Required", "Notes"].map(function (t) {
      return el("th", { text: t });
    }));
    var rows = [];
    var inner = nested(schema, stack || []);
    if (inner) {
      fieldRows(inner.schema, inner.suffix ? inner.suffix + "." : "", 0, inner.stack, rows);
      if (!rows.length) rows.push(emptyRow("an object without declared fields"));
    } else {
      var type = typeOf(schema);
      rows.push(el("tr", { "data-field": "", "data-type": type.text, "data-required": "true" }, [
        el("td", { "class": "field empty", text: "(the whole payload)" }),
        el("td", { "class": "type" }, type.nodes),
        el("td", { "class": "required" }, [el("span", { "class": "yes", text: "required" })]),
        el("td", { "class": "notes", text: notes(schema) })
      ]));
    }
    return el("table", { "class": "schema" }, [el("thead", {}, [head]), el("tbody", {}, rows)]);
  }

  function emptyRow(text) {
    return el("tr", {}, [el("td", { "class": "empty", colspan: "4", text: text })]);
  }

  function description(text) {
    return text ? el("p", { "class": "description", text: text }) : null;
  }

  function header() {
    var info = doc.info || {};
    var count = Object.keys(doc.channels || {}).length;
    return el("header", { "class": "service", id: "service", "data-service": info.title || "" }, [
      el("h1", {}, [info.title || "(untitled)", el("span", { "class": "version", text: info.version || "" })]),
      el("p", { "class": "meta", text: "AsyncAPI " + (doc.asyncapi || "?") + " \u00b7 " +
        count + (count === 1 ? " channel" : " channels") }),
      description(info.description),
      el("nav", { "class": "toc" }, entries(doc.channels).map(function (pair) {
        return el("a", { href: "#channel-" + pair[0], text: pair[1].address || pair[0] });
      }))
    ]);
  }

  function servers() {
    var rows = entries(doc.servers).map(function (pair) {
      var server = pair[1] || {};
      return el("tr", { "data-server": pair[0] }, [
        el("td", { "class": "field", text: pair[0] }),
        el("td", { text: server.protocol || "" }),
        el("td", { "class": "mono", text: (server.host || "") + (server.pathname || "") }),
        el("td", { "class": "notes", text: server.description || "" })
      ]);
    });
    if (!rows.length) rows.push(emptyRow("no server"));
    var head = el("tr", {}, ["Name", "Protocol", "Host", "Description"].map(function (t) {
      return el("th", { text: t });
    }));
    return el("section", { id: "servers" }, [
      el("h2", { text: "Servers" }),
      el("div", { "class": "card" }, [el("table", {}, [el("thead", {}, [head]), el("tbody", {}, rows)])])
    ]);
  }

  function operation(id, op) {
    var action = op.action === "send" ? "send" : "receive";
    var chips = [];
    if (op["x-microbroker-queue"] !== undefined) {
      chips.push(el("span", { "class": "chip", "data-queue": op["x-microbroker-queue"],
        text: "queue group " + op["x-microbroker-queue"] }));
    }
    if (op["x-microbroker-handler"]) {
      chips.push(el("span", { "class": "chip mono", text: op["x-microbroker-handler"] }));
    }
    return el("div", { "class": "operation " + action, "data-operation": id, "data-action": action }, [
      el("div", {}, [el("span", { "class": "badge " + action, text: action }), el("strong", { text: id })]),
      op.summary ? el("p", { "class": "summary", text: op.summary }) : null,
      description(op.description),
      chips.length ? el("div", {}, chips) : null
    ]);
  }

  function message(id, ref) {
    var msg = deref(ref) || {};
    var title = msg.title || msg.name || id;
    return el("div", { "class": "message", "data-message": id }, [
      el("h4", {}, [title, msg.contentType
        ? el("span", { "class": "content-type", "data-content-type": msg.contentType, text: msg.contentType })
        : el("span", { "class": "content-type", text: "any content type" })]),
      msg.summary ? el("p", { "class": "summary", text: msg.summary }) : null,
      description(msg.description),
      own(msg.headers, "$ref")
        ? el("p", { "class": "headers" }, ["headers: ", schemaLink(msg.headers.$ref)]) : null,
      schemaTable(msg.payload === undefined ? true : msg.payload, [])
    ]);
  }

  function channels() {
    var byChannel = {};
    entries(doc.operations).forEach(function (pair) {
      var target = pair[1].channel && pair[1].channel.$ref;
      (byChannel[target] = byChannel[target] || []).push(pair);
    });
    var cards = entries(doc.channels).map(function (pair) {
      var id = pair[0], channel = pair[1] || {};
      var ops = byChannel["#/channels/" + id.replace(/~/g, "~0").replace(/\//g, "~1")] || [];
      return el("article", { "class": "card channel", id: "channel-" + id, "data-channel": channel.address || "" }, [
        el("h3", {}, [el("code", { text: channel.address || "" })]),
        id !== channel.address ? el("p", { "class": "id", text: "channel " + id }) : null,
        description(channel.description),
        el("div", { "class": "operations" }, ops.map(function (op) { return operation(op[0], op[1]); })),
        el("div", { "class": "messages" }, entries(channel.messages).map(function (m) {
          return message(m[0], m[1]);
        }))
      ]);
    });
    if (!cards.length) cards.push(el("p", { "class": "empty", text: "This service has no channel." }));
    return el("section", { id: "channels" }, [el("h2", { text: "Channels" })].concat(cards));
  }

  function componentSchemas() {
    var cards = entries(schemas).map(function (pair) {
      var name = pair[0], schema = pair[1] || {};
      var body;
      if (Array.isArray(schema["enum"])) {
        body = el("p", { "class": "enum", text: "one of: " + enumValues(schema) });
      } else {
        body = schemaTable(schema, ["#/components/schemas/" + name]);
      }
      return el("article", { "class": "card schema", id: "schema-" + name, "data-schema": name }, [
        el("h3", {}, [el("code", { text: name })]),
        description(schema.description),
        body
      ]);
    });
    return el("section", { id: "schemas" }, [el("h2", { text: "Schemas" })].concat(cards));
  }

  var app = document.getElementById("app");
  while (app.firstChild) app.removeChild(app.firstChild);
  [header(), servers(), channels(), componentSchemas()].forEach(function (part) { app.appendChild(part); });
  document.body.setAttribute("data-rendered", "true");
})();
