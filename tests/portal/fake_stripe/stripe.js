// A stand-in for Stripe.js (https://js.stripe.com/v3/) in the portal's browser tests,
// served in its place by a Playwright route. It has just enough of Stripe's surface for
// the checkout page: Stripe(key), elements({clientSecret}), create("payment"),
// mount(selector) and confirmPayment({elements, confirmParams: {return_url}}).
//
// The "payment element" is a labelled card-number field. Confirming with the decline
// card (4000 0000 0000 0002, as in Stripe's test cards) resolves with Stripe's
// card_declined error; any other number redirects to return_url with the parameters
// Stripe adds (payment_intent, payment_intent_client_secret, redirect_status).
// Confirming the PaymentIntent itself happens at localstripe, from the test.
"use strict";

(function () {
  var DECLINE = "4000000000000002";

  function Element(kind) {
    this.kind = kind;
    this.input = null;
  }
  Element.prototype.mount = function (target) {
    var host = typeof target === "string" ? document.querySelector(target) : target;
    var label = document.createElement("label");
    label.setAttribute("for", "fake-stripe-card");
    label.textContent = "Card number";
    var input = document.createElement("input");
    input.id = "fake-stripe-card";
    input.type = "text";
    input.inputMode = "numeric";
    input.autocomplete = "cc-number";
    host.appendChild(label);
    host.appendChild(input);
    this.input = input;
  };

  function Elements(options) {
    if (!options || !options.clientSecret) {
      throw new Error("IntegrationError: elements() needs a clientSecret");
    }
    this.clientSecret = options.clientSecret;
    this.created = [];
  }
  Elements.prototype.create = function (kind) {
    if (kind !== "payment") {
      throw new Error("IntegrationError: only the payment element is faked");
    }
    var element = new Element(kind);
    this.created.push(element);
    return element;
  };

  function FakeStripe(key) {
    if (!key || key.indexOf("pk_") !== 0) {
      throw new Error("IntegrationError: Stripe() needs a publishable key (pk_…)");
    }
    this.key = key;
  }
  FakeStripe.prototype.elements = function (options) {
    return new Elements(options);
  };
  FakeStripe.prototype.confirmPayment = function (options) {
    var elements = options && options.elements;
    var returnUrl = options && options.confirmParams && options.confirmParams.return_url;
    if (!elements || !returnUrl) {
      return Promise.reject(new Error("IntegrationError: elements and return_url are required"));
    }
    var card = (elements.created[0].input.value || "").replace(/\s+/g, "");
    if (card === "") {
      return Promise.resolve({ error: { type: "validation_error", message: "Your card number is incomplete." } });
    }
    if (card === DECLINE) {
      return Promise.resolve({
        error: { type: "card_error", code: "card_declined", message: "Your card was declined." },
      });
    }
    var secret = elements.clientSecret;
    var url = new URL(returnUrl);
    url.searchParams.set("payment_intent", secret.split("_secret_")[0]);
    url.searchParams.set("payment_intent_client_secret", secret);
    url.searchParams.set("redirect_status", "succeeded");
    window.location.assign(url.toString());
    return new Promise(function () {});  // the page is leaving
  };

  window.Stripe = function (key) {
    return new FakeStripe(key);
  };
})();
