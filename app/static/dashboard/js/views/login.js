// Sign in and sign up, on the API's own endpoints (and so its rate limits).
// ``cookies: true`` asks the API to set the session as HttpOnly cookies
// instead of returning the tokens: no token is ever visible to this page.

import {api} from "../api.js";
import {errorBox, field, h, replace, showFieldErrors} from "../dom.js";

function failureMessage(error) {
  if (error.status === 429) {
    const wait = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : " Try again later.";
    return `Too many attempts.${wait}`;
  }
  return error.message;
}

function authForm(main, {title, intro, inputs, submitLabel, path, toBody, onSignedIn, footer, notice}) {
  const summary = h("div", {class: "form-summary"});
  const fields = {};
  for (const [name, label, control, options] of inputs) {
    control.name = name;
    fields[name] = field(label, control, options);
  }
  const button = h("button", {type: "submit", class: "primary"}, submitLabel);
  const form = h("form", {class: "auth-form", novalidate: true, "aria-labelledby": "auth-title"},
    Object.values(fields), button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    replace(summary);
    try {
      const data = await api("POST", path, {body: {...toBody(form), cookies: true}, auth: false});
      onSignedIn(data.user);
    } catch (error) {
      const rest = showFieldErrors(fields, error.fieldErrors);
      replace(summary, errorBox({message: [failureMessage(error), ...rest].join(" ")}));
      if (!Object.keys(error.fieldErrors || {}).length) Object.values(fields)[0].control.focus();
    } finally {
      button.disabled = false;
    }
  });
  replace(main, h("section", {class: "auth"},
    h("h1", {id: "auth-title", tabindex: "-1"}, title),
    intro ? h("p", {}, intro) : null,
    notice ? h("div", {class: "alert info", role: "status"}, notice) : null,
    summary, form, footer));
  Object.values(fields)[0].control.focus();
}

/** The sign-in form; ``onSignedIn(user)`` once the session cookies are set. */
export function renderLogin(main, {onSignedIn, notice}) {
  document.title = "Sign in · taskq";
  authForm(main, {
    title: "Sign in to taskq",
    notice,
    inputs: [
      ["username", "Username or email", h("input", {type: "text", autocomplete: "username", required: true}), {required: true}],
      ["password", "Password", h("input", {type: "password", autocomplete: "current-password", required: true}), {required: true}],
    ],
    submitLabel: "Sign in",
    path: "auth/login",
    toBody: (form) => ({username: form.elements.username.value, password: form.elements.password.value}),
    onSignedIn,
    footer: h("p", {}, "No account yet? ", h("a", {href: "#/register"}, "Create an account")),
  });
}

/** The sign-up form. */
export function renderRegister(main, {onSignedIn}) {
  document.title = "Create an account · taskq";
  authForm(main, {
    title: "Create an account",
    inputs: [
      ["username", "Username", h("input", {type: "text", autocomplete: "username"}), {required: true, hint: "Letters, digits and @ . + - _"}],
      ["email", "Email", h("input", {type: "email", autocomplete: "email"}), {required: true}],
      ["password", "Password", h("input", {type: "password", autocomplete: "new-password"}), {required: true, hint: "At least 8 characters, not a common one."}],
      ["password2", "Repeat the password", h("input", {type: "password", autocomplete: "new-password"}), {required: true}],
      ["first_name", "First name", h("input", {type: "text", autocomplete: "given-name"})],
      ["last_name", "Last name", h("input", {type: "text", autocomplete: "family-name"})],
    ],
    submitLabel: "Create account",
    path: "auth/register",
    toBody: (form) => Object.fromEntries(
      ["username", "email", "password", "password2", "first_name", "last_name"].map((n) => [n, form.elements[n].value]),
    ),
    onSignedIn,
    footer: h("p", {}, "Already have an account? ", h("a", {href: "#/login"}, "Sign in")),
  });
}
