// Form fields generated from a task type's payload JSON schema (GET /task-types,
// made from the same marshmallow schema the API and the worker validate with).
//
// The page converts what is typed into JSON values and nothing more: checking
// them is the API's job, and its field_errors ("payload.numbers.1") come back
// next to the field they name.

import {field, h, uid} from "./dom.js";

function humanize(name) {
  const words = name.replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function isScalar(schema) {
  return ["number", "integer", "string"].includes(schema && schema.type);
}

/** The control, hint and reader of one property. */
function propertyControl(name, schema, required) {
  const hints = [];
  if (schema.description) hints.push(schema.description);
  if (schema.default !== undefined && schema.default !== null) hints.push(`Default: ${JSON.stringify(schema.default)}`);
  let control;
  let read;
  let fill;
  if (schema.enum) {
    const options = [...new Set(schema.enum)];
    control = h("select", {},
      required && schema.default === undefined ? h("option", {value: ""}, "Choose…") : h("option", {value: ""}, "(default)"),
      options.map((value) => h("option", {value: String(value)}, String(value))));
    read = () => (control.value === "" ? undefined : control.value);
    fill = (value) => { control.value = value === undefined ? "" : String(value); };
  } else if (schema.type === "boolean") {
    control = h("input", {type: "checkbox", checked: schema.default === true});
    read = () => control.checked;
    fill = (value) => { control.checked = Boolean(value); };
  } else if (schema.type === "number" || schema.type === "integer") {
    control = h("input", {
      type: "number",
      step: schema.type === "integer" ? "1" : "any",
      min: schema.minimum, max: schema.maximum, inputmode: "decimal",
    });
    if (schema.minimum !== undefined && schema.maximum !== undefined) hints.push(`From ${schema.minimum} to ${schema.maximum}`);
    read = () => {
      const text = control.value.trim();
      if (text === "") return undefined;
      const number = Number(text);
      return Number.isFinite(number) ? number : text;  // the API says what is wrong with it
    };
    fill = (value) => { control.value = value === undefined || value === null ? "" : String(value); };
  } else if (schema.type === "string") {
    const type = {email: "email", url: "url"}[schema.format] || "text";
    control = h("input", {type, maxlength: schema.maxLength});
    if (schema.maxLength && schema.maxLength > 200) control = h("textarea", {rows: "3", maxlength: schema.maxLength});
    read = () => (control.value === "" ? undefined : control.value);
    fill = (value) => { control.value = value ?? ""; };
  } else if (schema.type === "array" && isScalar(schema.items)) {
    const numeric = schema.items.type !== "string";
    control = h("input", {type: "text", inputmode: numeric ? "decimal" : "text"});
    hints.push(numeric ? "Numbers separated by commas" : "Values separated by commas");
    read = () => {
      const parts = control.value.split(",").map((part) => part.trim()).filter((part) => part !== "");
      if (!parts.length) return undefined;
      return numeric ? parts.map((part) => (Number.isFinite(Number(part)) ? Number(part) : part)) : parts;
    };
    fill = (value) => { control.value = Array.isArray(value) ? value.join(", ") : ""; };
  } else {
    control = h("textarea", {rows: "3", spellcheck: "false", class: "code"});
    hints.push(schema.type === "array" ? "A JSON array" : schema.type === "object" ? "A JSON object" : "Any JSON value");
    read = () => {
      const text = control.value.trim();
      if (text === "") return undefined;
      try {
        return JSON.parse(text);
      } catch {
        throw new SyntaxError("Not valid JSON.");
      }
    };
    fill = (value) => { control.value = value === undefined ? "" : JSON.stringify(value, null, 2); };
  }
  control.name = `payload.${name}`;
  const wrapper = field(humanize(name), control, {hint: hints.join(". ") || null, required});
  return {wrapper, read, fill, schema};
}

/**
 * The payload part of the create form for ``taskType``: {element, fields, read}.
 * ``fields`` maps "payload.<name>" and "payload" to where their errors show;
 * ``read()`` returns the payload object or throws {fieldErrors} for what the
 * page cannot even turn into JSON.
 */
export function payloadForm(taskType) {
  const schema = taskType.payload_schema || {type: "object"};
  const properties = schema.properties || {};
  const required = new Set(schema.required || []);
  const names = Object.keys(properties).sort((a, b) => Number(required.has(b)) - Number(required.has(a)));
  const free = !names.length && schema.additionalProperties !== false;

  const fields = {};  // "payload.<name>" -> its field wrapper
  const props = {};
  for (const name of names) {
    const prop = propertyControl(name, properties[name], required.has(name));
    props[name] = prop;
    fields[`payload.${name}`] = prop.wrapper;
  }

  const jsonControl = h("textarea", {name: "payload", rows: "6", spellcheck: "false", class: "code"});
  const jsonField = field("Payload (JSON)", jsonControl, {hint: names.length ? "A JSON object; it replaces the fields above." : "A JSON object."});
  const toggleId = uid("json-toggle");
  const toggle = h("input", {type: "checkbox", id: toggleId});
  const toggleField = h("div", {class: "field check"}, toggle, h("label", {for: toggleId}, "Edit the payload as JSON"));
  const fieldBox = h("div", {class: "payload-fields"},
    names.length ? Object.values(fields) : h("p", {class: "hint"}, free ? "This type takes any JSON object." : "This type takes no payload."));
  const generalError = h("p", {class: "field-error", hidden: true, id: uid("payload-error")});
  const legend = h("legend", {}, `Payload of ${taskType.name}`);
  const element = h("fieldset", {class: "payload", tabindex: "-1"}, legend,
    taskType.description ? h("p", {class: "hint"}, taskType.description) : null,
    fieldBox, names.length ? toggleField : null, jsonField, generalError);

  const setJsonMode = (on) => {
    fieldBox.hidden = on && names.length > 0;
    jsonField.hidden = !on && !free;
  };
  if (free) jsonControl.value = "{}";
  setJsonMode(free);

  function readFields() {
    const value = {};
    const errors = {};
    for (const [name, prop] of Object.entries(props)) {
      try {
        const item = prop.read();
        if (item !== undefined) value[name] = item;
      } catch (error) {
        errors[`payload.${name}`] = [error.message];
      }
    }
    if (Object.keys(errors).length) throw Object.assign(new Error("Invalid payload"), {fieldErrors: errors});
    return value;
  }

  toggle.addEventListener("change", () => {
    if (toggle.checked) {
      try {
        jsonControl.value = JSON.stringify(readFields(), null, 2);
      } catch {
        jsonControl.value = "{}";
      }
    } else {
      try {
        const value = JSON.parse(jsonControl.value || "{}");
        for (const [name, prop] of Object.entries(props)) prop.fill(value[name]);
      } catch {
        // Unparsable JSON: the fields keep what they had.
      }
    }
    setJsonMode(toggle.checked);
    for (const wrapper of [...Object.values(fields), jsonField, underFields]) wrapper.showError([]);
  });

  // Errors under the fields (field mode), or all at the JSON box (JSON mode: an
  // error on "payload.numbers" then reads "numbers: …" there).
  const underFields = {
    control: element,
    showError(messages) {
      const text = (messages || []).join(" ");
      generalError.textContent = text;
      generalError.hidden = !text;
    },
  };
  const inJson = () => free || toggle.checked;

  return {
    element,
    /** The field wrappers errors go to, by API field name ("payload.numbers"). */
    get fields() {
      return inJson() ? {payload: jsonField} : {...fields, payload: underFields};
    },
    read() {
      if (inJson()) {
        try {
          const value = JSON.parse(jsonControl.value.trim() || "{}");
          return value;
        } catch {
          throw Object.assign(new Error("Invalid payload"), {fieldErrors: {payload: ["Not valid JSON."]}});
        }
      }
      return readFields();
    },
  };
}
